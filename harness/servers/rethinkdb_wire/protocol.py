"""Wire-level constants, error type and response framing of the ReQL JSON protocol.

The numeric ids come from the protocol definition that the official driver ships
(``rethinkdb.ql2_pb2``), so the double and the driver can never disagree about them.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from rethinkdb.ql2_pb2 import Query, Response, Term, VersionDummy

QueryType = Query.QueryType
ResponseType = Response.ResponseType
ErrorType = Response.ErrorType
Note = Response.ResponseNote
TermType = Term.TermType
V1_0 = VersionDummy.Version.V1_0

TERM_NAMES = {v: k for k, v in vars(TermType).items() if isinstance(v, int)}

HEADER = struct.Struct("<qL")  # token, payload length (both directions)


class QueryError(Exception):
    """A ReQL error to send back: RUNTIME_ERROR with an error type, or COMPILE/CLIENT."""

    def __init__(
        self,
        message: str,
        error_type: int = ErrorType.QUERY_LOGIC,
        response_type: int = ResponseType.RUNTIME_ERROR,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.response_type = response_type


def non_existence(message: str) -> QueryError:
    return QueryError(message, ErrorType.NON_EXISTENCE)


def op_failed(message: str) -> QueryError:
    return QueryError(message, ErrorType.OP_FAILED)


def unsupported(what: str) -> QueryError:
    """Something real RethinkDB has but this test double does not (a compile error)."""
    return QueryError(
        f"{what} is not supported by the rethinkdb_wire test double.",
        response_type=ResponseType.COMPILE_ERROR,
    )


def frame(token: int, body: dict[str, Any]) -> bytes:
    payload = json.dumps(
        body, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    return HEADER.pack(token, len(payload)) + payload


def response(rtype: int, data: list, notes: list[int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"t": rtype, "r": data}
    if notes:
        body["n"] = notes
    return body


def error_response(error: QueryError) -> dict[str, Any]:
    body: dict[str, Any] = {"t": error.response_type, "r": [error.message], "b": []}
    if error.response_type == ResponseType.RUNTIME_ERROR:
        body["e"] = error.error_type
    return body
