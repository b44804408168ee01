"""The leader record: the one piece of state the members share through the store.

Every backend stores the same logical record and every write to it goes through a compare-and-set:

========== ==========================================================================
holder     member id of the leader; ``None`` once a leader resigned (a *vacant* record)
token      random token of the holder's engine incarnation; renewals must present it
term       rises on every claim; the fencing token handed to users
version    rises on every write; followers time the leader out by watching it change
nominee    member asked to take over (``elect``); the leader hands over to it
renewed_at store clock of the last write, seconds since the epoch (display only)
========== ==========================================================================

Only the store's clock is ever written; no decision compares clocks of different machines.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRecord

__all__ = [
    "CORRUPT_VERSION",
    "MISSING_VERSION",
    "RECORD_FORMAT",
    "LeaderRecord",
    "Observation",
    "WriteResult",
    "decode_record",
]

#: Marker stored with every record so foreign data in the same key is recognised.
RECORD_FORMAT = "leaderfeed/1"
#: ``Observation.version`` of a store that holds no record at all.
MISSING_VERSION = 0
#: ``Observation.version`` of a store whose record is not one of ours.
CORRUPT_VERSION = -1


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """One version of the leader record, as read from the store."""

    holder: str | None
    token: str | None
    term: int
    version: int
    nominee: str | None = None
    renewed_at: float | None = None

    @property
    def vacant(self) -> bool:
        """True when the last leader resigned and nobody claimed the record since."""
        return self.holder is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "holder": self.holder,
            "token": self.token,
            "term": self.term,
            "version": self.version,
            "nominee": self.nominee,
            "renewed_at": self.renewed_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidRecord(f"field {key!r} must be a string or null")


def _count(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    # bool is an int subclass; a record with term=True is not ours.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"field {key!r} must be an integer")
    if isinstance(value, float) and not value.is_integer():
        raise InvalidRecord(f"field {key!r} must be an integer")
    number = int(value)
    if number < 1:
        raise InvalidRecord(f"field {key!r} must be positive")
    return number


def decode_record(data: Mapping[str, Any] | str | bytes) -> LeaderRecord:
    """Validate a stored record; raise :class:`~.errors.InvalidRecord` (a ``ValueError``) saying
    why it is not one of ours.

    Accepts the JSON text Redis stores or the document MongoDB and RethinkDB return.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRecord(f"not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise InvalidRecord("not an object")
    if data.get("format") != RECORD_FORMAT:
        raise InvalidRecord(f"format is {data.get('format')!r}, expected {RECORD_FORMAT!r}")
    holder = _optional_str(data, "holder")
    token = _optional_str(data, "token")
    if (holder is None) != (token is None):
        raise InvalidRecord("holder and token must both be set or both be null")
    renewed_at = data.get("renewed_at")
    if renewed_at is not None and (
        isinstance(renewed_at, bool)
        or not isinstance(renewed_at, int | float)
        or not math.isfinite(renewed_at)
    ):
        raise InvalidRecord("field 'renewed_at' must be a number or null")
    return LeaderRecord(
        holder=holder,
        token=token,
        term=_count(data, "term"),
        version=_count(data, "version"),
        nominee=_optional_str(data, "nominee"),
        renewed_at=None if renewed_at is None else float(renewed_at),
    )


@dataclass(frozen=True, slots=True)
class Observation:
    """What one read (or one write's reply) saw in the store.

    ``record`` is None when the store holds no record (``corrupt`` False) or holds something that
    is not a valid record (``corrupt`` True). ``store_time`` is the store's clock when known.
    ``suspect`` is True when the record was written under another history of the store than
    the one it has now (a Redis restarted from a snapshot, a promoted replica): the store may
    have gone back in time, so the record proves nothing about who acts. Only a claim may
    replace it; it is then treated like a missing record (see ``transitions``).
    """

    record: LeaderRecord | None
    corrupt: bool = False
    store_time: float | None = None
    suspect: bool = False

    @property
    def version(self) -> int:
        """The version a claim must name to replace what was observed."""
        if self.record is not None:
            return self.record.version
        return CORRUPT_VERSION if self.corrupt else MISSING_VERSION

    @property
    def leader_id(self) -> str | None:
        return None if self.record is None else self.record.holder

    def same_state(self, other: Observation | None) -> bool:
        """True when both saw the same stored state (the store clock is ignored)."""
        return (
            other is not None
            and self.corrupt == other.corrupt
            and self.suspect == other.suspect
            and _identity(self.record) == _identity(other.record)
        )


def _identity(record: LeaderRecord | None) -> tuple[object, ...] | None:
    if record is None:
        return None
    return (record.version, record.term, record.holder, record.token, record.nominee)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of a compare-and-set: the record written, or the one that made it fail."""

    ok: bool
    observation: Observation
    #: A claim that replaced a suspect record (written under an earlier history of the store):
    #: whoever the store forgot may still act, so the claimer acts one election timeout later.
    over_suspect: bool = False
