"""``celery leaderfeed status``: the leader record as the store holds it, read directly.

Unlike ``celery inspect leaderfeed`` it needs no running worker and no broker: it reads the
record with the backend of the app's settings (``-A proj``), optionally another election or
store. Passwords are never printed: the store is shown by its redacted URL.

The state is one of ``held``, ``expired`` (a holder that stopped renewing: its record is older
than the app's ``leaderfeed_election_timeout_max``, after which any follower may claim it),
``vacant`` (the leader resigned), ``missing`` and ``corrupt`` (not a leaderfeed record). The
record's age is the store's clock at the read minus the store's clock at the last renewal:
no local clock is involved, so a skewed client cannot make a live leader look expired.

Registered as a ``celery`` subcommand through the ``celery.commands`` entry point.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import click

from ..errors import BackendUnavailable, ConfigurationError
from ..record import Observation
from ..urls import redact
from .settings import resolve_settings

__all__ = ["leaderfeed", "status"]


@click.group(name="leaderfeed")
def leaderfeed() -> None:
    """Leader election (celery-leaderfeed) tools."""


@leaderfeed.command()
@click.option("--name", help="Election to read (default: the leaderfeed_name setting).")
@click.option(
    "--backend",
    metavar="URL",
    help="Store to read (default: the leaderfeed_backend setting, else the Redis broker).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(ctx: click.Context, name: str | None, backend: str | None, as_json: bool) -> None:
    """Show who leads: state (held, expired, vacant, missing, corrupt), holder, term, version,
    nominee, store time and record age."""
    app = ctx.obj.app
    try:
        settings = resolve_settings(app, {"leaderfeed_name": name, "leaderfeed_backend": backend})
        store = settings.store()
    except ConfigurationError as exc:
        raise _failure(exc, app, backend) from exc
    try:
        store.connect()
        observation = store.read()
    except (BackendUnavailable, ConfigurationError) as exc:  # some URLs are parsed at connect
        raise _failure(exc, app, backend) from exc
    finally:
        store.close()
    fields = describe(observation, settings.timing.election_timeout_max)
    fields = {"election": settings.name, "backend": store.display_url, **fields}
    if as_json:
        click.echo(json.dumps(fields, sort_keys=True))
        return
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        click.echo(f"{key.replace('_', ' '):<{width}}  {_text(value)}")


def _failure(exc: Exception, app: Any, backend: str | None) -> click.ClickException:
    """``exc`` as the one line ``status`` prints: messages are redacted where they are made,
    and once more here against every URL that may have gone into them."""
    message = str(exc)
    for url in (backend, app.conf.get("leaderfeed_backend"), app.conf.get("broker_url")):
        if isinstance(url, str):
            message = redact(message, url)
    return click.ClickException(message)


def describe(observation: Observation, timeout: float) -> dict[str, Any]:
    """The fields ``status`` prints for one read of the record.

    A record not renewed for more than ``timeout`` seconds (by the store's clock) is
    ``expired``: its holder is shown as ``last_holder`` only, not as ``holder`` (the leader).
    """
    record = observation.record
    store_time = observation.store_time
    age = None
    if record is not None and record.renewed_at is not None and store_time is not None:
        age = round(max(0.0, store_time - record.renewed_at), 3)
    if record is None:
        state = "corrupt" if observation.corrupt else "missing"
    elif record.vacant:
        state = "vacant"
    else:
        state = "expired" if age is not None and age > timeout else "held"
    return {
        "state": state,
        "holder": record.holder if record is not None and state == "held" else None,
        "last_holder": None if record is None else record.holder,
        "term": None if record is None else record.term,
        "version": None if record is None else record.version,
        "nominee": None if record is None else record.nominee,
        "store_time": _iso(store_time),
        "renewed_at": _iso(None if record is None else record.renewed_at),
        "record_age": age,
        "election_timeout": timeout,
    }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
