"""ReQL for the RethinkDB backend: "is this document a record", its version, and decoding.

``is_record`` is ``decode_record``'s rules as a ReQL expression, so a compare-and-set never
takes a foreign document for a record; ``observation_of`` decides in Python with
``decode_record`` itself.
"""

from __future__ import annotations

from typing import Any

from rethinkdb import r

from ...record import RECORD_FORMAT, Observation, decode_record

Term = Any  # a ReQL term: the driver is untyped

ENTRY_PREFIX = "entry:"
#: The record's fields after ``id`` and ``format``, in the order the backend writes them.
FIELDS = ("holder", "token", "term", "version", "nominee", "renewed_at", "schedule")
#: The message of the r.error that refuses a fenced schedule write.
REFUSED = "leaderfeed: fenced write refused"


def field(doc: Term, name: str) -> Term:
    return doc[name].default(None)  # a missing field reads as null, as in decode_record


def is_record(doc: Term) -> Term:
    """True when ``doc`` (an object or null) passes decode_record."""

    def count(name: str) -> Term:  # r.branch is lazy: floor() only ever sees a number
        value = field(doc, name)
        return r.branch(
            value.type_of().eq("NUMBER"), value.ge(1).and_(value.floor().eq(value)), False
        )

    def of_type(name: str, *types: str) -> Term:
        return r.expr(list(types)).contains(field(doc, name).type_of())

    return r.branch(
        doc.type_of().ne("OBJECT"),
        False,
        field(doc, "format").ne(RECORD_FORMAT),
        False,
        r.and_(
            count("term"),
            count("version"),
            of_type("holder", "STRING", "NULL"),
            of_type("token", "STRING", "NULL"),
            of_type("nominee", "STRING", "NULL"),
            field(doc, "holder").eq(None).eq(field(doc, "token").eq(None)),
            of_type("renewed_at", "NUMBER", "NULL"),
        ),
    )


def version_of(doc: Term, valid: Term) -> Term:
    """The version as Observation.version counts it: 0 missing, -1 foreign."""
    return r.branch(doc.eq(None), 0, valid, doc["version"], -1)


def holds(doc: Term, valid: Term, term: int, token: str) -> Term:
    return r.branch(valid, doc["term"].eq(term).and_(doc["token"].eq(token)), False)


def entries_of(doc: Term) -> Term:
    return r.branch(field(doc, "schedule").type_of().eq("OBJECT"), doc["schedule"], {})


def at_least(value: Term, floor: int) -> Term:
    return value.do(lambda v: r.branch(v.gt(floor), v, floor))


def mark_held(doc: Term, now: Term) -> Term:
    """True while the mark ``doc`` has not expired at ``now`` (epoch seconds); a mark without
    a numeric ``expires_at`` counts as expired."""
    at = field(doc, "expires_at")
    return r.branch(at.type_of().eq("NUMBER"), at.gt(now), False)


def observation_of(doc: object, store_time: float | None) -> Observation:
    if doc is None:
        return Observation(None, store_time=store_time)
    if isinstance(doc, dict):
        fields = {key: value for key, value in doc.items() if key not in ("id", "schedule")}
        try:
            return Observation(decode_record(fields), store_time=store_time)
        except ValueError:
            pass
    return Observation(None, corrupt=True, store_time=store_time)
