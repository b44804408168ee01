"""``celery leaderfeed status | check | elect``: the election as the store holds it, a health
probe, and a planned handover.

``status`` and ``check`` need no running worker and no broker: they read the record (and the
beat's per-entry schedule states) with the backend of the app's settings (``-A proj``),
optionally another election or store. Passwords are never printed: the store is shown by its
redacted URL.

The state is one of ``held``, ``expired`` (a holder that stopped renewing: its record is older
than the app's ``leaderfeed_election_timeout_max``, after which any follower may claim it),
``vacant`` (the leader resigned), ``missing`` and ``corrupt`` (not a leaderfeed record). The
record's age is the store's clock at the read minus the store's clock at the last renewal:
no local clock is involved, so a skewed client cannot make a live leader look expired.

``check`` exits with the codes of :class:`~celery_leaderfeed.celery.health.Health` (0 ok, 3 no
valid leader, 4 store unreachable, 5 a schedule entry overdue; 1 a bad setting, 2 a usage
error), within ``--timeout`` (default: the operation timeout) whatever the store does.

``elect NODE`` asks the worker ``NODE`` over the broker's remote control
(:mod:`~celery_leaderfeed.celery.control`) whether it can lead: only a live member of this
election answers, so an unknown or dead node changes nothing. Then the leader hands over: it
stops admitting leader-only work, waits for its running leader-only bodies while it keeps
renewing, and the engine's transfer resigns naming ``NODE``, who claims at once (when no live
leader answers, ``NODE`` nominates itself and the engine's leader hands over the same way,
waiting at most one heartbeat). The command then reads the store until ``NODE`` holds the
record.

Registered as a ``celery`` subcommand through the ``celery.commands`` entry point.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import click

from ..backends.base import Backend
from ..errors import BackendUnavailable, ConfigurationError
from ..record import Observation
from ..urls import redact
from .health import Health, describe, judge_entries, store_now
from .settings import LeaderfeedSettings, resolve_settings

__all__ = ["check", "describe", "elect", "leaderfeed", "status"]

#: What a reply from a worker over the broker may take, at least.
_REPLY_TIMEOUT = 2.0
#: How often ``elect`` reads the record while it waits for the node to lead.
_ELECT_POLL_SECONDS = 0.005


@click.group(name="leaderfeed")
def leaderfeed() -> None:
    """Leader election (celery-leaderfeed) tools."""


def _store_options(fn: Any) -> Any:
    fn = click.option(
        "--beat",
        is_flag=True,
        help="The election of standalone `celery beat` processes (leaderfeed_beat_name) "
        "instead of the workers' (worker -B follows the workers').",
    )(fn)
    fn = click.option(
        "--backend",
        metavar="URL",
        help="Store to read (default: the leaderfeed_backend setting, else the Redis broker).",
    )(fn)
    return click.option("--name", help="Election to read (default: the leaderfeed_name setting).")(
        fn
    )


@leaderfeed.command()
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status(
    ctx: click.Context, name: str | None, backend: str | None, beat: bool, as_json: bool
) -> None:
    """Show who leads: state (held, expired, vacant, missing, corrupt), holder, term, version,
    nominee, store time and record age. --json adds every field, and the schedule entries
    (beat_schedule and the states stored for them) with how late each is."""
    app = ctx.obj.app
    settings, store = _store(app, name, backend)
    election = settings.beat_name if beat else settings.name
    store = settings.store(election) if beat else store
    try:
        read = _read(store, entries=as_json, within=3 * settings.timing.timeout + 1.0)
    except (BackendUnavailable, ConfigurationError) as exc:  # some URLs are parsed at connect
        raise _failure(exc, app, backend) from exc
    fields = _fields(settings, election, store, read)
    if as_json:
        fields["entries"] = judge_entries(
            app, read.entries or {}, store_now(read.observation), None
        )
        click.echo(json.dumps(fields, sort_keys=True))
        return
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        click.echo(f"{key.replace('_', ' '):<{width}}  {_text(value)}")


@leaderfeed.command()
@_store_options
@click.option(
    "--overdue-periods",
    type=click.FloatRange(min=0, min_open=True),
    metavar="N",
    help="Also fail (exit 5) if an entry of beat_schedule is late by more than N of its "
    "periods. Entries a composed scheduler keeps elsewhere (django-celery-beat, RedBeat) are "
    "listed, not judged.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Exit 4 if the store has not answered within this (default: the operation timeout).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def check(
    ctx: click.Context,
    name: str | None,
    backend: str | None,
    beat: bool,
    overdue_periods: float | None,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Health probe: exit 0 if a leader holds a valid lease (and, with --overdue-periods, no
    schedule entry is late). Exit codes: 0 ok, 3 no valid leader (missing, vacant, expired or
    corrupt record), 4 store unreachable, 5 a schedule entry overdue (worst first: 4, 3, 5);
    1 a bad setting, 2 a usage error. One line per finding."""
    app = ctx.obj.app
    settings, store = _store(app, name, backend)
    election = settings.beat_name if beat else settings.name
    store = settings.store(election) if beat else store
    within = timeout if timeout is not None else settings.timing.timeout
    findings: list[str] = []
    fields: dict[str, Any] = {"election": election, "backend": store.display_url}
    try:
        read = _read(store, entries=overdue_periods is not None or as_json, within=within)
    except (BackendUnavailable, ConfigurationError) as exc:
        code = Health.STORE_UNREACHABLE
        findings.append(f"store unreachable: {_failure(exc, app, backend).message}")
    else:
        fields = _fields(settings, election, store, read)
        entries = judge_entries(
            app, read.entries or {}, store_now(read.observation), overdue_periods
        )
        fields["entries"] = entries
        code = Health.OK
        if fields["state"] != "held":
            code = Health.NO_LEADER
            findings.append(f"no valid leader: {_no_leader(fields)}")
        for entry, judged in entries.items():
            if judged["state"] == "overdue":
                if code is Health.OK:
                    code = Health.OVERDUE
                findings.append(
                    f"overdue: entry {entry!r} was due at {judged['next_due']}, "
                    f"{judged['late_periods']:g} periods ago (limit {overdue_periods:g})"
                )
        if code is Health.OK:
            on_time = sum(1 for judged in entries.values() if judged["state"] == "on_time")
            judged_note = f"; {on_time} schedule entries on time" if overdue_periods else ""
            findings.append(
                f"ok: {fields['holder']} leads election {election!r} "
                f"(term {fields['term']}){judged_note}"
            )
    if as_json:
        click.echo(json.dumps({**fields, "exit_code": int(code), "findings": findings}))
    else:
        for line in findings:
            click.echo(line)
    ctx.exit(int(code))


@leaderfeed.command()
@click.argument("node")
@click.option("--name", help="Election (default: the leaderfeed_name setting).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="How long to wait for NODE to lead (default: twice leaderfeed_election_timeout_max).",
)
@click.pass_context
def elect(ctx: click.Context, node: str, name: str | None, timeout: float | None) -> None:
    """Hand leadership to the worker NODE (its node name, e.g. w2@host), e.g. before draining
    the current leader. The leader stops its leader-only work first, then NODE leads. Only a
    live worker of this election can be elected: otherwise nothing changes."""
    app = ctx.obj.app
    settings, store = _store(app, name, None)
    wait = timeout if timeout is not None else 2 * settings.timing.election_timeout_max
    reply_within = max(_REPLY_TIMEOUT, settings.timing.election_timeout_max)
    started = time.monotonic()

    def ask(worker: str, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = app.control.broadcast(
            command, arguments=arguments, destination=[worker], reply=True,
            timeout=reply_within, limit=1,
        )  # fmt: skip
        return next((item[worker] for item in replies or () if worker in item), None)

    # 1. NODE itself says whether it can lead: a live worker of this election, not stopping.
    reply = ask(node, "leaderfeed_elect", election=settings.name, nominate=False)
    if reply is None:
        members = _members(app, settings.name, reply_within)
        known = f"; members that answered: {', '.join(members)}" if members else ""
        raise click.ClickException(
            f"no worker named {node} answered within {reply_within:g} s (unknown or not "
            f"running){known}; leadership unchanged"
        )
    if "error" in reply:
        raise click.ClickException(f"{node}: {reply['error']}; leadership unchanged")
    leader = reply.get("leader")
    # 2. The leader drains its leader-only work, renewing meanwhile, then resigns naming NODE.
    handed = None
    if leader is not None and leader != node:
        handed = ask(
            leader, "leaderfeed_hand_over", node=node, election=settings.name, timeout=wait
        )
    # 3. No live leader answered (none, dead, or cut off): NODE nominates itself; the engine's
    #    leader, if any, still hands over first.
    if handed is None or "error" in handed:
        reply = ask(node, "leaderfeed_elect", election=settings.name, nominate=True)
        if reply is None or "error" in reply:
            why = "it stopped answering" if reply is None else reply["error"]
            raise click.ClickException(f"{node}: {why}; leadership unchanged")
    try:
        store.connect()

        def leads() -> Observation | None:
            observation = store.read()
            fields = describe(observation, settings.timing.election_timeout_max)
            return observation if fields["holder"] == node else None

        observation = _poll(leads, wait)
    except (BackendUnavailable, ConfigurationError) as exc:
        raise _failure(exc, app, None) from exc
    finally:
        store.close()
    if observation is None or observation.record is None:
        raise click.ClickException(
            f"{node} did not lead within {wait:g} s (the leader waits for its running "
            "leader-only tasks first; or a worker stopped, or the store failed): see the logs"
        )
    elapsed = time.monotonic() - started
    before = f"; was {leader}" if leader not in (None, node) else ""
    click.echo(
        f"{node} leads election {settings.name!r} (term {observation.record.term}{before}; "
        f"{elapsed:.3f} s)"
    )


def _members(app: Any, election: str, within: float) -> list[str]:
    """The workers of ``election`` that answer ``celery inspect leaderfeed``."""
    replies = app.control.broadcast("leaderfeed", reply=True, timeout=within) or ()
    return sorted(
        host
        for item in replies
        for host, report in item.items()
        if isinstance(report, dict) and report.get("name") == election
    )


def _poll(condition: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(_ELECT_POLL_SECONDS)  # the record changes in ms; a read costs a round trip


# -- reading the store ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Read:
    observation: Observation
    #: Raw per-entry schedule states (None: not read).
    entries: dict[str, str] | None


def _store(app: Any, name: str | None, backend: str | None) -> tuple[LeaderfeedSettings, Backend]:
    try:
        settings = resolve_settings(app, {"leaderfeed_name": name, "leaderfeed_backend": backend})
        return settings, settings.store()
    except ConfigurationError as exc:
        raise _failure(exc, app, backend) from exc


def _read(store: Backend, *, entries: bool, within: float) -> _Read:
    """Connect, read the record (and the schedule states), close; in ``within`` seconds at most.

    The calls run on a thread of their own, so a store that accepts connections and never
    answers (a paused server, a black hole) costs ``within``, whatever its driver's timeouts.
    """
    outcome: futures.Future[_Read] = futures.Future()

    def work() -> None:
        try:
            store.connect()
            observation = store.read()
            outcome.set_result(_Read(observation, store.read_entries() if entries else None))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.set_exception(exc)
        finally:
            store.close()

    threading.Thread(target=work, name="leaderfeed-cli-read", daemon=True).start()
    try:
        return outcome.result(within)
    except futures.TimeoutError:
        raise BackendUnavailable(
            f"{store.display_url} did not answer within {within:g} s"
        ) from None


def _fields(
    settings: LeaderfeedSettings, election: str, store: Backend, read: _Read
) -> dict[str, Any]:
    return {
        "election": election,
        "backend": store.display_url,
        **describe(read.observation, settings.timing.election_timeout_max),
    }


def _no_leader(fields: dict[str, Any]) -> str:
    state = fields["state"]
    election = fields["election"]
    if state == "expired":
        return (
            f"the record of {election!r} names {fields['last_holder']}, not renewed for "
            f"{fields['record_age']:g} s (election timeout {fields['election_timeout']:g} s)"
        )
    if state == "vacant":
        return f"the record of {election!r} is vacant (its leader resigned)"
    if state == "corrupt":
        return f"the record of {election!r} is not a leaderfeed record"
    return f"no record of {election!r} in {fields['backend']} (no member ever ran)"


def _failure(exc: Exception, app: Any, backend: str | None) -> click.ClickException:
    """``exc`` as one line: messages are redacted where they are made, and once more here
    against every URL that may have gone into them."""
    message = str(exc)
    for url in (backend, app.conf.get("leaderfeed_backend"), app.conf.get("broker_url")):
        if isinstance(url, str):
            message = redact(message, url)
    return click.ClickException(message)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
