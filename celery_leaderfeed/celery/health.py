"""What ``celery leaderfeed status`` and ``check`` make of one read of the store.

Pure functions over what was read - the leader record (an
:class:`~celery_leaderfeed.record.Observation`) and the raw per-entry schedule states
(:class:`~celery_leaderfeed.celery.occurrences.EntryState`) - and the app's ``beat_schedule``;
the command-line glue is :mod:`~celery_leaderfeed.celery.cli`. Every age is judged by the store's
clock at the read where the store tells it, so a client whose clock is off cannot make a live
leader look expired or a punctual beat look late.

Exit codes of ``check`` (:class:`Health`), the worst finding wins in this order: ``4`` store
unreachable, ``3`` no valid leader, ``5`` a schedule entry overdue; ``0`` otherwise. ``1`` is a
bad setting or option value (one line), ``2`` a command-line usage error (click's).

What counts as overdue: an entry of ``beat_schedule`` whose next run after the last one the
leader handled (its stored ``last_due``) is late by more than ``N`` of its periods (the interval,
or for a crontab or solar schedule the gap between that run and the one after it). An entry with
no stored state yet (no leader has seen it) is reported, never judged. Entries that schedulers
composed with :func:`~celery_leaderfeed.leader_gated` keep elsewhere (django-celery-beat's
database rows, RedBeat's keys) are not in ``beat_schedule``: their stored states are listed as
``unscheduled`` with their last due time and counts, but not judged - their schedules live in
the other store.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from celery.schedules import maybe_schedule

from ..record import Observation
from .occurrences import CorruptState, EntryState, ScheduleError, format_due, next_due

__all__ = ["Health", "describe", "judge_entries", "store_now"]


class Health(enum.IntEnum):
    """Exit codes of ``celery leaderfeed check``."""

    OK = 0
    #: A bad setting or option value (the one-line ``Error: ...`` of every command).
    CONFIGURATION = 1
    #: The leader record is missing, vacant, expired or not a leaderfeed record.
    NO_LEADER = 3
    #: The store did not answer (refused, timed out, or no answer within the check's bound).
    STORE_UNREACHABLE = 4
    #: A ``beat_schedule`` entry is late by more than ``--overdue-periods`` periods.
    OVERDUE = 5


def describe(observation: Observation, timeout: float) -> dict[str, Any]:
    """The fields ``status`` prints for one read of the record.

    A record not renewed for more than ``timeout`` seconds (by the store's clock) is
    ``expired``: its holder is shown as ``last_holder`` only, not as ``holder`` (the leader).
    ``suspect``: the store may have gone back to an earlier state since the record was written
    (its history marker changed); only a claim can replace such a record.
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
        "suspect": observation.suspect,
        "store_time": _iso(store_time),
        "renewed_at": _iso(None if record is None else record.renewed_at),
        "record_age": age,
        "election_timeout": timeout,
    }


def store_now(observation: Observation) -> datetime:
    """The store's clock at the read (UTC), else this machine's."""
    if observation.store_time is not None:
        return datetime.fromtimestamp(observation.store_time, tz=timezone.utc)
    return datetime.now(timezone.utc)


def judge_entries(
    app: Any,
    stored: Mapping[str, str],
    now: datetime,
    overdue_periods: float | None,
) -> dict[str, dict[str, Any]]:
    """Each entry of ``app.conf.beat_schedule`` and each stored state, judged at ``now``.

    ``state`` is ``on_time``, ``overdue`` (late by more than ``overdue_periods`` periods; never
    when that is None), ``unseen`` (no stored state yet), ``unscheduled`` (a stored state for a
    name ``beat_schedule`` does not hold: a removed entry, or one a composed scheduler keeps
    elsewhere), ``corrupt`` (a stored state this package did not write) or ``exhausted`` (a
    one-time schedule already run). ``late_periods`` is how many periods late the next run is
    (0 when it is not due yet).
    """
    schedule: Mapping[str, Any] = app.conf.get("beat_schedule") or {}
    judged: dict[str, dict[str, Any]] = {}
    for name in sorted(set(schedule) | set(stored)):
        raw = stored.get(name)
        fields: dict[str, Any] = {"state": "unseen"}
        state: EntryState | None = None
        if raw is not None:
            try:
                state = EntryState.decode(raw)
            except CorruptState as exc:
                judged[name] = {"state": "corrupt", "error": str(exc)}
                continue
            fields.update(
                last_due=format_due(state.last_due),
                term=state.term,
                runs=state.runs,
                skipped=state.skipped,
                sent_at=_iso(state.sent_at),
            )
        spec = schedule.get(name)
        if spec is None:
            fields["state"] = "unscheduled"
        elif state is not None:
            fields.update(_lateness(app, spec, state.last_due, now, overdue_periods))
        judged[name] = fields
    return judged


def _lateness(
    app: Any,
    spec: Any,
    last_due: datetime,
    now: datetime,
    limit: float | None,
) -> dict[str, Any]:
    try:
        entry_schedule = maybe_schedule(spec.get("schedule"), spec.get("relative", False), app=app)
        due = next_due(entry_schedule, last_due)
        period = (next_due(entry_schedule, due) - due).total_seconds()
    except ScheduleError as exc:
        return {"state": "exhausted", "error": str(exc)}
    except (AttributeError, TypeError, ValueError) as exc:  # not a schedule Celery can read
        return {"state": "corrupt", "error": f"beat_schedule entry: {exc}"}
    late = max(0.0, (now - due).total_seconds())
    late_periods = round(late / period, 3) if period > 0 else 0.0
    overdue = limit is not None and late > limit * period
    return {
        "state": "overdue" if overdue else "on_time",
        "next_due": format_due(due),
        "period": round(period, 6),
        "late_periods": late_periods,
    }


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds")
