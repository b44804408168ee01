"""What each compare-and-set does, as pure functions: the specification every backend follows.

Each function takes what the store holds now and returns the record to write, or ``None`` when
the compare fails (the store is then left untouched). ``now`` is the store's clock. The memory
backend applies these directly; the other backends do the same thing atomically inside the
store (Lua in Redis, a filtered update in MongoDB, ``r.branch`` in RethinkDB).

Terms and versions never repeat, even when the store loses the record (a Redis restarted
without persistence) or goes back to an earlier state of it (restarted from an old snapshot, a
replica promoted after missing writes): a claim over a missing, foreign or *suspect* record
(written under another history of the store, see ``Observation.suspect``) starts both at the
store's clock in milliseconds; a claim over a trusted record raises them by one but never
leaves them more than :data:`CLOCK_LAG_MS` below that clock; and ``min_term``/``min_version``
carry the highest values the claimer has seen. A term or version issued in a lost stretch of
history is therefore below the clock of any later claim over a suspect record (and below that
of any claim made :data:`CLOCK_LAG_MS` after the loss over a record that does not look
suspect), as long as the store's clock does not step back and claims are rarer than one per
millisecond.

A suspect record cannot be renewed, resigned, nominated on or used to fence a schedule
write: its holder may have lost its term in the history the store forgot.
"""

from __future__ import annotations

from ..record import LeaderRecord, Observation

__all__ = [
    "CLOCK_LAG_MS",
    "claimed",
    "entry_written",
    "fresh_term",
    "nominated",
    "renewed",
    "resigned",
]

#: How far below the store's clock (ms) a claim over a trusted record may leave term and version.
#: Quick claims in a row (a handover, then another) still count up by one; a claim made this
#: long after a loss the store did not reveal is above every term issued before the loss.
CLOCK_LAG_MS = 1000


def _holds(current: Observation, term: int, token: str) -> LeaderRecord | None:
    record = current.record
    if record is not None and not current.suspect and record.term == term and record.token == token:
        return record
    return None


def claimed(
    current: Observation,
    expected_version: int,
    holder: str,
    token: str,
    min_term: int,
    min_version: int,
    now: float,
) -> LeaderRecord | None:
    """Take the record if nobody wrote it since the claimer observed ``expected_version``."""
    if current.version != expected_version:
        return None
    record = current.record
    fresh = fresh_term(now)
    if record is None:
        term = version = fresh
    else:
        floor = fresh if current.suspect else fresh - CLOCK_LAG_MS
        term = max(record.term + 1, floor)
        version = max(record.version + 1, floor)
    return LeaderRecord(
        holder=holder,
        token=token,
        term=max(term, min_term),
        version=max(version, min_version),
        nominee=None,
        renewed_at=now,
    )


def fresh_term(now: float) -> int:
    """The first term (and version) over an empty store: its clock in milliseconds."""
    return int(now * 1000)


def renewed(current: Observation, term: int, token: str, now: float) -> LeaderRecord | None:
    """Extend the holder's lease; a pending nomination of another member stays visible."""
    record = _holds(current, term, token)
    if record is None:
        return None
    return LeaderRecord(
        holder=record.holder,
        token=token,
        term=term,
        version=record.version + 1,
        nominee=None if record.nominee == record.holder else record.nominee,
        renewed_at=now,
    )


def resigned(
    current: Observation, term: int, token: str, nominee: str | None, now: float
) -> LeaderRecord | None:
    """Leave the record vacant. The term stays: only a claim starts a new term."""
    record = _holds(current, term, token)
    if record is None:
        return None
    return LeaderRecord(
        holder=None,
        token=None,
        term=term,
        version=record.version + 1,
        nominee=nominee,
        renewed_at=now,
    )


def nominated(
    current: Observation, expected_version: int, nominee: str, now: float
) -> LeaderRecord | None:
    """Record a request that ``nominee`` lead; only a valid record can carry one."""
    record = current.record
    if record is None or current.suspect or record.version != expected_version:
        return None
    return LeaderRecord(
        holder=record.holder,
        token=record.token,
        term=record.term,
        version=record.version + 1,
        nominee=nominee,
        renewed_at=now,
    )


def entry_written(
    current: Observation, term: int, token: str, stored: str | None, expected: str | None
) -> bool:
    """Whether a fenced schedule-entry write may go ahead."""
    return _holds(current, term, token) is not None and stored == expected
