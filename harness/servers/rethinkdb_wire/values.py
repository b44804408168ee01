"""ReQL datums as plain Python values, plus the few helpers RethinkDB semantics need.

Datums are None, bool, int/float, str, list, dict and :class:`Time`.  They are treated
as immutable everywhere: every operation builds new lists/dicts, so stored documents
can be shared safely between the store, feeds and results.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

from .protocol import QueryError, non_existence


class Time:
    """A ReQL TIME pseudo-type (epoch seconds + "+HH:MM" offset)."""

    __slots__ = ("epoch", "tz")

    def __init__(self, epoch: float, tz: str = "+00:00") -> None:
        self.epoch = epoch
        self.tz = tz

    @classmethod
    def now(cls) -> Time:
        return cls(round(time.time(), 3))  # RethinkDB keeps millisecond precision

    @classmethod
    def from_iso8601(cls, text: str) -> Time:
        try:
            parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(f"Invalid date string `{text}`.") from None
        offset = parsed.utcoffset()
        if offset is None:
            raise QueryError(
                "ISO 8601 string has no time zone, and no default time zone was provided."
            )
        minutes = int(offset.total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        tz = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        return cls(round(parsed.timestamp(), 3), tz)

    def to_json(self) -> dict:
        return {"$reql_type$": "TIME", "epoch_time": self.epoch, "timezone": self.tz}

    def __repr__(self) -> str:
        return f"Time({self.epoch!r}, {self.tz!r})"


class Literal:
    """The value of ``r.literal(x)``; only meaningful inside merge/update."""

    __slots__ = ("remove", "value")

    def __init__(self, value: Any = None, remove: bool = False) -> None:
        self.value = value
        self.remove = remove


def from_wire(value: Any) -> Any:
    """Turn a decoded JSON object that is a pseudo-type into its datum."""
    if isinstance(value, dict) and value.get("$reql_type$") == "TIME":
        return Time(value["epoch_time"], value.get("timezone", "+00:00"))
    return value


def to_wire(value: Any) -> Any:
    """A JSON-ready copy of a datum: times as pseudo-types, integral floats as ints."""
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, Time):
        return value.to_json()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Literal):
        raise QueryError(
            "Stray literal keyword found: literal is only legal inside of the object "
            "passed to merge or update and cannot nest inside other literals."
        )
    return value


def type_name(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, (int, float)):
        return "NUMBER"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, list):
        return "ARRAY"
    if isinstance(value, dict):
        return "OBJECT"
    if isinstance(value, Time):
        return "PTYPE<TIME>"
    return getattr(value, "reql_type", "DATUM")


def truthy(value: Any) -> bool:
    return value is not None and value is not False


def reql_eq(a: Any, b: Any) -> bool:
    return reql_cmp(a, b) == 0


def reql_cmp(a: Any, b: Any) -> int:
    """RethinkDB ordering: by type name first, then by value."""
    ta, tb = type_name(a), type_name(b)
    if ta != tb:
        return -1 if ta < tb else 1
    if ta == "ARRAY":
        for x, y in zip(a, b, strict=False):
            c = reql_cmp(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if ta == "OBJECT":
        return reql_cmp(sorted_pairs(a), sorted_pairs(b))
    if ta == "PTYPE<TIME>":
        a, b = a.epoch, b.epoch
    if ta == "NULL":
        return 0
    return (a > b) - (a < b)


def sorted_pairs(obj: dict) -> list:
    return [[k, obj[k]] for k in sorted(obj)]


def pretty(value: Any) -> str:
    """Print a datum the way RethinkDB error messages do (tab-indented JSON)."""
    if value == {}:
        return "{\n}"
    return json.dumps(
        to_wire(value), indent="\t", separators=(",", ":\t"), sort_keys=True, ensure_ascii=False
    )


def expect(value: Any, wanted: str) -> Any:
    """Type check with RethinkDB's wording; a NULL in the way is a non-existence error."""
    found = type_name(value)
    if found != wanted:
        message = f"Expected type {wanted} but found {found}."
        raise non_existence(message) if value is None else QueryError(message)
    return value


def merge(old: Any, patch: Any) -> Any:
    """Deep merge used by MERGE and UPDATE (objects merge recursively, literals replace)."""
    if isinstance(patch, Literal):
        return strip_literals(patch.value)
    if not isinstance(old, dict) or not isinstance(patch, dict):
        return strip_literals(patch)
    out = dict(old)
    for key, value in patch.items():
        if isinstance(value, Literal) and value.remove:
            out.pop(key, None)
        elif key in out:
            out[key] = merge(out[key], value)
        else:
            out[key] = strip_literals(value)
    return out


def strip_literals(value: Any) -> Any:
    if isinstance(value, Literal):
        return strip_literals(value.value)
    if isinstance(value, dict):
        return {
            k: strip_literals(v)
            for k, v in value.items()
            if not (isinstance(v, Literal) and v.remove)
        }
    if isinstance(value, list):
        return [strip_literals(v) for v in value]
    return value


def primary_key_of(value: Any) -> Any:
    """A hashable identity for a primary-key datum (1 and 1.0 are the same key)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, Time):
        return ("t", value.epoch)
    if isinstance(value, list):
        return ("a", tuple(primary_key_of(v) for v in value))
    raise QueryError(
        "Primary keys must be either a number, string, bool, pseudotype or array "
        f"(got type {type_name(value)}):\n{pretty(value)}"
    )


# --- values that are not datums (what terms like DB, TABLE, GET, FUNC evaluate to) ---


class DbRef:
    reql_type = "DB"

    def __init__(self, name: str) -> None:
        self.name = name


class TableRef:
    reql_type = "TABLE"

    def __init__(self, table: Any) -> None:
        self.table = table


class SingleSel:
    """``table.get(key)``: usable as the document (or null) and as a write target."""

    reql_type = "SELECTION<OBJECT>"

    def __init__(self, table: Any, pk: Any) -> None:
        self.table, self.pk, self.doc = table, pk, table.get(pk)


class Selection:
    """A stream of documents of one table (filter / get_all); also a write target."""

    reql_type = "SELECTION<STREAM>"

    def __init__(self, table: Any, docs: list[dict]) -> None:
        self.table, self.docs = table, docs


class Func:
    reql_type = "FUNCTION"

    def __init__(self, params: list[int], body: Any, scope: dict) -> None:
        self.params, self.body, self.scope = params, body, scope
