"""The pure logic of the leader-gated beat: nominal due times, occurrence ids, misfire plans (the
:class:`PlannedRun` list of each entry) and the per-entry state kept in the store.

Why nominal times: a new leader must name each run exactly as the old leader did, or it cannot
tell which runs were already sent. A run is named after when it was *due* (``entry@due``), and
due times come only from the stored ``last_due`` and the schedule - never from when a send
happened - so every leader computes the same occurrences:

* interval schedules: ``last_due + run_every`` (exact, in microseconds);
* crontab, solar and other schedules: the schedule's own next slot strictly after ``last_due``,
  computed with the schedule's clock pinned to ``last_due`` so the answer does not depend on
  when it is asked.

An occurrence is *missed* when the next occurrence of the same entry is already due as well (it
was superseded before anyone sent it, e.g. during a failover). The latest due occurrence is
always sent; the missed ones are handled by the misfire policy:

``run_once``   one send for the latest occurrence that lists the missed ones it stands for
``skip``       the missed ones are recorded as skipped and logged, not sent
``catch_up``   each missed one is sent, at most ``catch_up_limit`` of them (the most recent);
               older ones are recorded as skipped

A stored state whose ``last_due`` lies past the schedule's next due time after now (for an
interval schedule: more than one period ahead) cannot have been written by a leader whose clock
agreed with ours - no leader handles a run before it is due. :func:`beyond_schedule` tells; the
:mod:`~celery_leaderfeed.celery.ledger` rebuilds such a state from now (:meth:`EntryState.rebased`)
instead of waiting for its clock to catch up, silent meanwhile.

Nothing here does I/O, so all of it is tested without Celery processes or a store.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from celery.schedules import schedule as interval_schedule

from ..errors import ConfigurationError, LeaderfeedError

__all__ = [
    "MAX_LISTED",
    "SCAN_LIMIT",
    "CorruptState",
    "EntryState",
    "Pending",
    "PendingPublish",
    "PlannedRun",
    "ScheduleError",
    "ScheduleExhausted",
    "beyond_schedule",
    "format_due",
    "from_micros",
    "next_due",
    "occurrence_id",
    "parse_occurrence_id",
    "pending",
    "plan",
    "plan_due",
    "send_headers",
    "task_id_for",
    "to_micros",
]

#: At most this many missed occurrence ids are listed in one send's headers (the most recent);
#: ``leaderfeed_missed`` always carries the full count.
MAX_LISTED = 100
#: Non-interval schedules are walked slot by slot; a backlog longer than this is worked off in
#: chunks of this size, one chunk per tick.
SCAN_LIMIT = 10_000

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_STATE_FORMAT = 2
#: Formats :meth:`EntryState.decode` reads: 1 (no pending publish) and 2.
_READ_FORMATS = (1, 2)
#: Namespace of the deterministic task ids of periodic runs (:func:`task_id_for`).
TASK_ID_NAMESPACE = uuid.UUID("5c0d3a52-8f7e-4d0c-9a4b-6c1e2f3a4b5d")


class ScheduleError(LeaderfeedError, ValueError):
    """A schedule cannot name its next occurrence (e.g. an interval of zero), or a time or
    occurrence id given to this module is not one it can read."""


class ScheduleExhausted(ScheduleError):
    """A schedule names no slot after a given time: a one-time (clocked) schedule after its run."""


class CorruptState(LeaderfeedError, ValueError):
    """A stored entry state is not one this module wrote."""


# -- time and ids ------------------------------------------------------------------------------


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact)."""
    if moment.tzinfo is None:
        raise ScheduleError(f"naive datetime {moment!r}: pass an aware one")
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The UTC datetime ``micros`` microseconds after the Unix epoch (exact)."""
    return _EPOCH + timedelta(microseconds=micros)


def format_due(due: datetime) -> str:
    """``2024-05-01T12:00:00.500000Z``: fixed width, so ids sort in due order."""
    return due.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def occurrence_id(entry: str, due: datetime) -> str:
    """The id of ``entry``'s run due at ``due``; the same on every leader."""
    return f"{entry}@{format_due(due)}"


def task_id_for(election: str, occurrence: str) -> str:
    """The task id of every publish of ``occurrence`` in ``election``: the same on every leader
    and every attempt, so a republish is the same Celery task."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{election}/{occurrence}"))


def parse_occurrence_id(occurrence: str) -> tuple[str, datetime]:
    """``(entry, due)`` from an occurrence id (entry names may contain ``@``)."""
    entry, sep, due = occurrence.rpartition("@")
    if not sep or not entry:
        raise ScheduleError(f"not an occurrence id: {occurrence!r}")
    moment = datetime.strptime(due, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return entry, moment


# -- the schedule ------------------------------------------------------------------------------


def _interval(schedule: Any) -> int | None:
    """The step in microseconds of a plain (non-relative) interval schedule, else None."""
    if type(schedule) is interval_schedule and not schedule.relative:
        step: int = schedule.run_every // _MICROSECOND
        if step <= 0:
            raise ScheduleError(f"interval schedule {schedule!r} must be longer than zero")
        return step
    return None


def _pinned(schedule: Any, now: datetime) -> Any:
    """A shallow clone of ``schedule`` whose clock always reads ``now``.

    Celery schedules compute "time until the next slot after X" against ``self.now()``;
    pinning the clock turns that into a pure function of X. The clone shares the original's
    attributes (app, timezone) but never changes the original.
    """
    clone = object.__new__(type(schedule))
    clone.__dict__.update(schedule.__dict__)
    clone.nowfun = lambda: now
    return clone


def next_due(schedule: Any, after: datetime) -> datetime:
    """The first nominal due time of ``schedule`` strictly after ``after`` (UTC)."""
    step = _interval(schedule)
    if step is not None:
        return from_micros(to_micros(after) + step)
    remaining = _pinned(schedule, after).remaining_estimate(after)
    if remaining is None:  # RedBeat's rrule with a count or an end: no slot left
        raise ScheduleExhausted(f"schedule {schedule!r} names no slot after {format_due(after)}")
    due = from_micros(to_micros(after) + remaining // _MICROSECOND)
    if due <= after:
        raise ScheduleExhausted(f"schedule {schedule!r} names no slot after {format_due(after)}")
    return due


def beyond_schedule(schedule: Any, last_due: datetime, now: datetime) -> bool:
    """True when ``last_due`` lies past ``schedule``'s next due time after ``now``: further
    ahead than any leader whose clock reads ``now`` could have handled a run."""
    return last_due > next_due(schedule, now)


@dataclass(frozen=True, slots=True)
class Pending:
    """The occurrences of one entry due at some moment that no leader has handled yet."""

    #: Due time of the earliest pending occurrence.
    first: datetime
    #: The most recent pending due times, oldest first; ``recent[-1]`` is the latest.
    recent: tuple[datetime, ...]
    #: How many are pending in all (``len(recent)`` or more).
    count: int

    @property
    def latest(self) -> datetime:
        return self.recent[-1]


def pending(schedule: Any, last_due: datetime, now: datetime, keep: int) -> Pending | None:
    """What is due at ``now`` after ``last_due`` (None: nothing), keeping ``keep`` recent ones."""
    keep = max(1, keep)
    step = _interval(schedule)
    if step is not None:
        return _pending_interval(step, to_micros(last_due), to_micros(now), keep)
    return _pending_walked(schedule, last_due, now, keep)


def _pending_interval(step: int, last_due: int, now: int, keep: int) -> Pending | None:
    """Interval schedules by arithmetic: exact for any gap, however long."""
    first = last_due + step
    if first > now:
        return None
    count = (now - first) // step + 1
    latest = first + (count - 1) * step
    kept = min(keep, count)
    recent = tuple(from_micros(latest - (kept - 1 - i) * step) for i in range(kept))
    return Pending(from_micros(first), recent, count)


def _pending_walked(schedule: Any, last_due: datetime, now: datetime, keep: int) -> Pending | None:
    """Other schedules slot by slot, at most ``SCAN_LIMIT`` slots per call."""
    due = next_due(schedule, last_due)
    if due > now:
        return None
    first = due
    recent: deque[datetime] = deque(maxlen=keep)
    count = 0
    while due <= now and count < SCAN_LIMIT:
        recent.append(due)
        count += 1
        try:
            due = next_due(schedule, due)
        except ScheduleExhausted:  # a one-time schedule: this was its only slot
            break
    return Pending(first, tuple(recent), count)


# -- misfire plans -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """One run as planned: an atomic advance of an entry's state, with at most one send.

    The scheduler claims it by writing the state advanced to ``advance_to`` (a compare-and-set
    fenced on its term), then publishes ``send`` if there is one.
    """

    advance_to: datetime
    #: Due time of the occurrence this run sends (None: nothing is sent).
    send: datetime | None = None
    #: Missed occurrences the send stands for (``run_once``), most recent ``MAX_LISTED``.
    coalesced: tuple[datetime, ...] = ()
    #: How many missed occurrences the send stands for in all.
    coalesced_count: int = 0
    #: Occurrences this run records as skipped (not sent), starting at ``skipped_from``.
    skipped: int = 0
    skipped_from: datetime | None = None
    #: The last due time handled before this gap (for the headers and logs).
    missed_after: datetime | None = None


def plan_due(
    schedule: Any, last_due: datetime, now: datetime, policy: str, catch_up_limit: int
) -> list[PlannedRun]:
    """The runs that handle what of ``schedule`` is due at ``now`` after ``last_due`` (none:
    nothing is due), under ``policy``."""
    found = pending(schedule, last_due, now, keep=max(MAX_LISTED, catch_up_limit) + 1)
    return [] if found is None else plan(found, last_due, policy, catch_up_limit)


def plan(found: Pending, last_due: datetime, policy: str, catch_up_limit: int) -> list[PlannedRun]:
    """The runs that handle ``found`` under ``policy`` (see the module docstring)."""
    latest = found.latest
    missed = found.count - 1
    if missed == 0:
        return [PlannedRun(advance_to=latest, send=latest)]
    if policy == "run_once":
        listed = found.recent[:-1][-MAX_LISTED:]
        return [
            PlannedRun(
                advance_to=latest,
                send=latest,
                coalesced=listed,
                coalesced_count=missed,
                missed_after=last_due,
            )
        ]
    if policy == "skip":
        return [
            PlannedRun(
                advance_to=latest,
                send=latest,
                skipped=missed,
                skipped_from=found.first,
                missed_after=last_due,
            )
        ]
    if policy == "catch_up":
        sent_missed = min(missed, catch_up_limit, len(found.recent) - 1)
        to_send = found.recent[-(sent_missed + 1) :]
        dropped = missed - sent_missed
        runs = [
            PlannedRun(
                advance_to=to_send[0],
                send=to_send[0],
                skipped=dropped,
                skipped_from=found.first if dropped else None,
                missed_after=last_due,
            )
        ]
        runs += [PlannedRun(advance_to=due, send=due, missed_after=last_due) for due in to_send[1:]]
        return runs
    raise ConfigurationError(f"unknown misfire policy {policy!r}")


def send_headers(
    entry: str, run: PlannedRun, *, term: int, sender: str, sent_at: float
) -> dict[str, Any]:
    """The message headers stamped on ``run``'s send.

    ``leaderfeed_occurrence`` is the run this send is; under ``run_once``,
    ``leaderfeed_coalesced`` lists the missed runs it also stands for (the most recent
    ``MAX_LISTED``; ``leaderfeed_missed`` is their full count and ``leaderfeed_missed_after``
    the due time of the run before the gap, so the whole set can be recomputed).
    """
    assert run.send is not None
    headers: dict[str, Any] = {
        "leaderfeed_term": term,
        "leaderfeed_occurrence": occurrence_id(entry, run.send),
        "leaderfeed_due": format_due(run.send),
        "leaderfeed_sender": sender,
        "leaderfeed_sent_at": sent_at,
    }
    if run.coalesced_count:
        headers["leaderfeed_coalesced"] = [occurrence_id(entry, due) for due in run.coalesced]
        headers["leaderfeed_missed"] = run.coalesced_count
    if run.missed_after is not None:
        headers["leaderfeed_missed_after"] = format_due(run.missed_after)
    return headers


# -- the stored state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingPublish:
    """A run claimed but not yet confirmed as published (format 2's ``pending``).

    The claim writes it with the state it advances; once the broker took the message, a second
    fenced write clears it. Whoever leads later and finds it - the same leader after a failed
    publish, or a successor after a crash - publishes it again under the same ``task_id``
    before anything new of the entry, and consumers drop a duplicate (see ``celery.once``).
    """

    occurrence: str
    task_id: str
    #: Term of the leader that wrote it (claimed, or took it over).
    term: int
    #: Publish attempts begun for it, this one included.
    attempt: int = 1
    #: The entry's ``last_due`` before the claim: the run's coalesced ids are planned again
    #: from it on a republish (None: not known, the republish lists none).
    after: datetime | None = None

    def encode(self) -> dict[str, Any]:
        return {
            "occurrence": self.occurrence,
            "task_id": self.task_id,
            "term": self.term,
            "attempt": self.attempt,
            "after": None if self.after is None else to_micros(self.after),
        }

    @classmethod
    def decode(cls, data: Any) -> PendingPublish:
        """Parse and validate ``pending``; raises :class:`CorruptState`."""
        if not isinstance(data, dict):
            raise CorruptState(f"pending must be an object, got {data!r:.80}")
        occurrence, task_id = data.get("occurrence"), data.get("task_id")
        if not isinstance(occurrence, str) or not isinstance(task_id, str):
            raise CorruptState(f"pending needs string occurrence and task_id: {data!r:.80}")
        try:
            parse_occurrence_id(occurrence)
            uuid.UUID(task_id)
        except (ScheduleError, ValueError) as exc:
            raise CorruptState(f"pending names no run: {data!r:.80}") from exc
        for key, low in (("term", 1), ("attempt", 1)):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CorruptState(f"pending {key!r} must be an integer >= {low}, got {value!r}")
        after = data.get("after")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise CorruptState(f"pending 'after' must be an integer or null, got {after!r}")
        try:
            after_due = None if after is None else from_micros(after)
        except OverflowError as exc:
            raise CorruptState(f"pending 'after' is out of range: {after!r}") from exc
        return cls(occurrence, task_id, data["term"], data["attempt"], after_due)


@dataclass(frozen=True, slots=True)
class EntryState:
    """What the store keeps per schedule entry, as one JSON string.

    ``last_due`` is the due time of the last occurrence handled (sent, coalesced or skipped)
    or, for a new entry, the moment the first leader saw it (the interval starts there, as
    Celery's own scheduler starts it at beat start).
    """

    last_due: datetime
    #: Term of the leader that wrote this state.
    term: int
    #: Sends so far, and occurrences recorded as skipped so far.
    runs: int = 0
    skipped: int = 0
    #: Wall-clock time (epoch seconds) of the last send.
    sent_at: float | None = None
    #: The run claimed and not yet confirmed as published (format 2).
    pending: PendingPublish | None = None
    #: Read from the store with a ``pending`` field that is not one this module wrote: the
    #: ledger rebuilds it (never encoded).
    pending_corrupt: bool = False

    @classmethod
    def anchored(cls, now: datetime, term: int) -> EntryState:
        """The state of an entry no leader has seen before."""
        return cls(last_due=from_micros(to_micros(now)), term=term)

    def rebased(self, now: datetime, term: int) -> EntryState:
        """This state restarted from ``now`` (its counts kept): for a state due further ahead
        than its schedule explains (see :func:`beyond_schedule`)."""
        return replace(self, last_due=from_micros(to_micros(now)), term=term)

    def after(
        self,
        run: PlannedRun,
        *,
        term: int,
        sent_at: float | None,
        election: str | None = None,
        entry: str | None = None,
    ) -> EntryState:
        """This state once ``run`` is claimed by the leader of ``term``. Given the ``election``
        and ``entry`` names, a run that sends is pending (:class:`PendingPublish`, its task id
        from :func:`task_id_for`) until :meth:`confirmed`."""
        pending = None
        if run.send is not None and election is not None and entry is not None:
            occurrence = occurrence_id(entry, run.send)
            pending = PendingPublish(
                occurrence, task_id_for(election, occurrence), term, after=self.last_due
            )
        return replace(
            self,
            last_due=run.advance_to,
            term=term,
            runs=self.runs + (1 if run.send is not None else 0),
            skipped=self.skipped + run.skipped,
            sent_at=sent_at if run.send is not None else self.sent_at,
            pending=pending,
            pending_corrupt=False,
        )

    def confirmed(self) -> EntryState:
        """This state once its pending run is known to be published."""
        return replace(self, pending=None, pending_corrupt=False)

    def retaken(self, term: int) -> EntryState:
        """This state with its pending run taken over by the leader of ``term`` for one more
        publish attempt."""
        assert self.pending is not None
        pending = replace(self.pending, term=term, attempt=self.pending.attempt + 1)
        return replace(self, term=term, pending=pending, pending_corrupt=False)

    def encode(self) -> str:
        return json.dumps(
            {
                "v": _STATE_FORMAT,
                "due": to_micros(self.last_due),
                "term": self.term,
                "runs": self.runs,
                "skipped": self.skipped,
                "sent_at": self.sent_at,
                "pending": None if self.pending is None else self.pending.encode(),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str) -> EntryState:
        """Parse and validate; raises :class:`CorruptState` for anything else."""
        try:
            data = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise CorruptState(f"not JSON: {raw[:80]!r}") from exc
        if not isinstance(data, dict) or data.get("v") not in _READ_FORMATS:
            raise CorruptState(f"not a format-1 or -2 entry state: {raw[:80]!r}")
        for key, low in (("due", 0), ("term", 1), ("runs", 0), ("skipped", 0)):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CorruptState(f"field {key!r} must be an integer >= {low}, got {value!r}")
        sent_at = data.get("sent_at")
        if sent_at is not None and (
            isinstance(sent_at, bool)
            or not isinstance(sent_at, int | float)
            or not math.isfinite(sent_at)
        ):
            raise CorruptState(f"field 'sent_at' must be a number or null, got {sent_at!r}")
        try:
            last_due = from_micros(data["due"])
        except OverflowError as exc:
            raise CorruptState(f"field 'due' is out of range: {data['due']!r}") from exc
        pending, pending_corrupt = None, False
        if data.get("pending") is not None:
            try:
                pending = PendingPublish.decode(data["pending"])
            except CorruptState:
                pending_corrupt = True  # the rest stands: the ledger rebuilds the pending run
        return cls(
            last_due=last_due,
            term=data["term"],
            runs=data["runs"],
            skipped=data["skipped"],
            sent_at=None if sent_at is None else float(sent_at),
            pending=pending,
            pending_corrupt=pending_corrupt,
        )
