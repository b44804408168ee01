"""``install(app)``: everything leaderfeed adds to a Celery app, in one idempotent call.

::

    app = Celery("proj")
    celery_leaderfeed.install(app)

It adds the worker step, the ``--leaderfeed-*`` options of ``celery worker`` (each overrides the
``leaderfeed_*`` setting of the same name) and the ``celery inspect leaderfeed`` command.
Nothing else in the package registers anything on import.

It deliberately does not call ``app.add_defaults(DEFAULTS)``: Celery puts such defaults *in
front of* the configuration loaded with ``config_from_object`` (add_defaults is "comparable to
conf.update"), so every ``leaderfeed_*`` value from a config module or Django's settings would
be shadowed by its default. ``resolve_settings`` applies the defaults itself.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import click

from .bootstep import LeaderFeedStep
from .settings import FOLLOWER_POLICIES

__all__ = ["install", "worker_options"]

_OPTIONS_GROUP = "Leaderfeed Options"
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def install(app: Any) -> None:
    """Add the leaderfeed step, the worker options and the inspect command to ``app``."""
    with _lock:
        if app in _installed:
            return
        from . import control  # noqa: F401, PLC0415 - registers `celery inspect leaderfeed`

        app.steps["worker"].add(LeaderFeedStep)
        options = app.user_options["worker"]
        taken = {name for option in options for name in getattr(option, "opts", ())}
        options.update(option for option in worker_options() if option.opts[0] not in taken)
        _installed.add(app)


def worker_options() -> list[click.Option]:
    """The ``celery worker`` options; each arrives as a keyword argument of the step."""
    from celery.bin.base import CeleryOption  # noqa: PLC0415 - the CLI's, loaded only here

    def option(flag: str, help_text: str, **kwargs: Any) -> click.Option:
        return CeleryOption([flag], help_group=_OPTIONS_GROUP, help=help_text, **kwargs)  # type: ignore[no-any-return]

    return [
        option(
            "--leaderfeed-backend",
            "Store holding the election (redis://, mongodb://, rethinkdb://). Prefer the "
            "setting for URLs with a password: the command line is visible to other users.",
            metavar="URL",
        ),
        option("--leaderfeed-name", "Election name: workers sharing it elect one leader."),
        option("--leaderfeed-heartbeat-interval", "Seconds between renewals.", type=float),
        option(
            "--leaderfeed-election-timeout-min",
            "Follower wait before claiming, lower bound (seconds).",
            type=float,
        ),
        option(
            "--leaderfeed-election-timeout-max",
            "Follower wait before claiming, upper bound (seconds).",
            type=float,
        ),
        option(
            "--leaderfeed-operation-timeout", "Bound on every store call (seconds).", type=float
        ),
        option(
            "--leaderfeed-follower-policy",
            "What @leader_only tasks do on a follower.",
            type=click.Choice(FOLLOWER_POLICIES),
        ),
        option("--leaderfeed-retry-delay", "Countdown of the retry policy (seconds).", type=float),
    ]
