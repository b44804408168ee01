"""``install(app)``: everything leaderfeed adds to a Celery app, in one idempotent call.

::

    app = Celery("proj")
    celery_leaderfeed.install(app)

It adds the worker step, the duplicate check of periodic runs (every task's
``before_start``, see :mod:`~celery_leaderfeed.celery.once`), the routing of ``@leader_only``
tasks to the election's leader queue (after the user's own routes, see
:mod:`~celery_leaderfeed.celery.leader_queue`), the
``--leaderfeed-*`` options of ``celery worker`` and ``celery beat``
(each overrides the ``leaderfeed_*`` setting of the same name) and the ``celery inspect
leaderfeed`` command. Nothing else in the package registers anything on import.

The worker's options reach the step as keyword arguments. Celery's beat passes no option on to
its scheduler (``Beat`` swallows unknown keyword arguments), so beat's options write their value
into ``app.conf`` as the command line is parsed, where ``LeaderScheduler`` resolves it.

It deliberately does not call ``app.add_defaults(DEFAULTS)``: Celery puts such defaults *in
front of* the configuration loaded with ``config_from_object`` (add_defaults is "comparable to
conf.update"), so every ``leaderfeed_*`` value from a config module or Django's settings would
be shadowed by its default. ``resolve_settings`` applies the defaults itself.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ._extras import celery_extra

with celery_extra():
    import click

from .bootstep import LeaderFeedStep
from .leader_queue import install_routing
from .once import install_dedup
from .settings import FOLLOWER_POLICIES

__all__ = ["beat_options", "install", "worker_options"]

_OPTIONS_GROUP = "Leaderfeed Options"
_installed: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def install(app: Any) -> None:
    """Add the leaderfeed step, the worker and beat options and the inspect command to ``app``."""
    with _lock:
        if app in _installed:
            return
        from . import control  # noqa: F401, PLC0415 - registers `celery inspect leaderfeed`

        app.steps["worker"].add(LeaderFeedStep)
        install_routing(app)
        install_dedup(app)
        _add_options(app.user_options["worker"], worker_options())
        _add_options(app.user_options["beat"], beat_options())
        _installed.add(app)


def _add_options(options: set[Any], ours: list[click.Option]) -> None:
    taken = {name for option in options for name in getattr(option, "opts", ())}
    options.update(option for option in ours if option.opts[0] not in taken)


def worker_options() -> list[click.Option]:
    """The ``celery worker`` options; each arrives as a keyword argument of the step."""
    return _options(_SETTINGS_OPTIONS + _WORKER_ONLY)


def beat_options() -> list[click.Option]:
    """The ``celery beat`` options; each is written into ``app.conf`` as it is parsed."""
    return _options(_SETTINGS_OPTIONS, callback=_into_conf, expose_value=False)


def _into_conf(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name is not None:
        ctx.obj.app.conf[param.name] = value  # the flag's name is the setting's
    return value


def _options(specs: list[tuple[str, str, dict[str, Any]]], **extra: Any) -> list[click.Option]:
    from celery.bin.base import CeleryOption  # noqa: PLC0415 - the CLI's, loaded only here

    return [
        CeleryOption([flag], help_group=_OPTIONS_GROUP, help=help_text, **kwargs, **extra)
        for flag, help_text, kwargs in specs
    ]


def _spec(flag: str, help_text: str, **kwargs: Any) -> tuple[str, str, dict[str, Any]]:
    return flag, help_text, kwargs


#: (flag, help, click keyword arguments) of the options both commands take.
_SETTINGS_OPTIONS = [
    _spec(
        "--leaderfeed-backend",
        "Store holding the election (redis://, mongodb://, rethinkdb://). Prefer the "
        "setting for URLs with a password: the command line is visible to other users.",
        metavar="URL",
    ),
    _spec("--leaderfeed-name", "Election name: workers sharing it elect one leader."),
    _spec("--leaderfeed-heartbeat-interval", "Seconds between renewals.", type=float),
    _spec(
        "--leaderfeed-election-timeout-min",
        "Follower wait before claiming, lower bound (seconds).",
        type=float,
    ),
    _spec(
        "--leaderfeed-election-timeout-max",
        "Follower wait before claiming, upper bound (seconds).",
        type=float,
    ),
    _spec("--leaderfeed-operation-timeout", "Bound on every store call (seconds).", type=float),
    _spec(
        "--leaderfeed-metrics-port",
        "Serve Prometheus metrics on this port (needs the prometheus extra).",
        type=int,
    ),
]
#: Options of ``@leader_only``, which runs in workers only.
_WORKER_ONLY = [
    _spec(
        "--leaderfeed-follower-policy",
        "What @leader_only tasks do on a follower.",
        type=click.Choice(FOLLOWER_POLICIES),
    ),
    _spec("--leaderfeed-retry-delay", "Countdown of the retry policy (seconds).", type=float),
    _spec("--leaderfeed-queue", "Queue of leader-only tasks (default: <name>.leader)."),
]
