"""MongoDB documents and expressions: what a stored record looks like to the server and to us.

``VALID_RECORD`` is ``decode_record``'s rules written as an aggregation expression, so that
every compare-and-set filter can refuse a malformed document on the server, as the Redis Lua
scripts do; ``observation_of`` decides validity in Python with ``decode_record`` itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from ...errors import ConfigurationError
from ...record import RECORD_FORMAT, Observation, decode_record

Doc = dict[str, Any]

RECORD_FIELDS = ("format", "holder", "token", "term", "version", "nominee", "renewed_at")
NOTIFY_MODES = ("auto", "changestream", "capped")
# The server's clock in float seconds. $toLong is MongoDB's documented Date -> milliseconds
# and sidesteps date comparison and $subtract, which SecantusDB gets wrong.
NOW_MS = {"$toLong": "$$NOW"}
NOW = {"$divide": [NOW_MS, 1000]}
NEXT_VERSION = {"$toLong": {"$add": ["$version", 1]}}
# One getMore waits at most this long; poll() strings several together within its timeout.
AWAIT_SECONDS = 0.1
NAMESPACE_EXISTS = 48
#: The TTL index of the marks collection.
MARK_TTL_INDEX = "leaderfeed_mark_expiry"
_INF = float("inf")
_KEY_ESCAPES = re.compile(r"[%.$\x00]")


def literal(value: object) -> Doc:
    return {"$literal": value}  # member ids may start with "$": never let one be a field path


def set_fields(**fields: object) -> list[Doc]:
    return [{"$set": fields}]


def _typed(field: str, *types: str) -> Doc:
    return {"$in": [{"$type": field}, list(types)]}


def _count(field: str) -> Doc:
    """A positive whole number: int, long or integral double (bool is a type of its own)."""
    whole = [{"$gte": [field, 1]}, {"$eq": [{"$trunc": field}, field]}, {"$lt": [field, _INF]}]
    return {"$cond": [_typed(field, "int", "long", "double"), {"$and": whole}, False]}


_FINITE = {"$and": [{"$gt": ["$renewed_at", -_INF]}, {"$lt": ["$renewed_at", _INF]}]}  # NaN fails
_ABSENT = _typed("$renewed_at", "null", "missing")
# The document is a valid record: decode_record's rules in the server's terms (as the Redis
# backend's Lua does), so no compare-and-set ever takes a malformed document for a record.
# Aggregation $eq and $type compare exact values; they do not look into arrays as queries do.
VALID_RECORD = {
    "$and": [
        {"$eq": ["$format", RECORD_FORMAT]},
        _count("$term"),
        _count("$version"),
        *(_typed(f, "string", "null", "missing") for f in ("$holder", "$token", "$nominee")),
        {"$eq": [_typed("$holder", "null", "missing"), _typed("$token", "null", "missing")]},
        {"$cond": [_typed("$renewed_at", "int", "long", "double"), _FINITE, _ABSENT]},
    ]
}


def entry_key(entry: str) -> str:
    """Schedule entry name -> field name without ``.``, ``$`` or NUL (``%``-escaped)."""
    return _KEY_ESCAPES.sub(lambda m: f"%{ord(m.group()):02X}", entry) or "%"


def entry_name(key: str) -> str:
    return "" if key == "%" else unquote(key)


def observation_of(doc: object, store_time: float | None = None) -> Observation:
    """What a stored document means, decided by ``decode_record`` as for every backend."""
    if doc is None:
        return Observation(None, store_time=store_time)
    if isinstance(doc, Mapping):
        try:
            record = decode_record({k: v for k, v in doc.items() if k not in ("_id", "schedule")})
        except ValueError:
            pass
        else:
            return Observation(record, store_time=store_time)
    return Observation(None, corrupt=True, store_time=store_time)


def name_option(options: Mapping[str, Any], key: str, default: str) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or not value or re.search(r"[\x00$]", value):
        raise ConfigurationError(f"option {key!r} must be a name without '$', got {value!r}")
    return value


def count_option(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"option {key!r} must be a positive integer, got {value!r}")
    return value
