"""What each compare-and-set does, as pure functions: the specification every backend follows.

Each function takes what the store holds now and returns the record to write, or ``None`` when
the compare fails (the store is then left untouched). ``now`` is the store's clock. The memory
backend applies these directly; the other backends do the same thing atomically inside the
store (Lua in Redis, a filtered update in MongoDB, ``r.branch`` in RethinkDB).

Terms and versions never go backwards, even when the store loses the record (a Redis
restarted without persistence): a claim over a missing or foreign record starts both at the
store's clock in milliseconds, and ``min_term``/``min_version`` carry the highest values the
claimer has seen. Neither is issued twice unless a cluster writes more often than once per
millisecond, so a compare-and-set on a version can never match a different record.
"""

from __future__ import annotations

from ..record import LeaderRecord, Observation

__all__ = ["claimed", "entry_written", "fresh_term", "nominated", "renewed", "resigned"]


def _holds(current: Observation, term: int, token: str) -> LeaderRecord | None:
    record = current.record
    if record is not None and record.term == term and record.token == token:
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
    term = record.term + 1 if record is not None else fresh_term(now)
    version = record.version + 1 if record is not None else fresh_term(now)
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
    if record is None or record.version != expected_version:
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
