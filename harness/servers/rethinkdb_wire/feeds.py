"""Changefeeds: a buffer of change documents per (connection, token).

The driver keeps one CONTINUE outstanding per feed.  A CONTINUE with nothing to report
is parked here (not answered) so the connection keeps serving other queries; the
first change, STOP, or abort answers it.  Changes made by one query are flushed
together on the next event-loop tick, so the client sees them ~immediately.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .protocol import (
    Note,
    QueryError,
    ResponseType,
    error_response,
    op_failed,
    response,
)
from .store import Table
from .values import primary_key_of


class FeedSpec:
    """What CHANGES evaluates to; the connection turns it into a live :class:`Feed`."""

    reql_type = "STREAM"  # a changefeed cannot be used as a datum

    def __init__(self, table: Table, key: Any, optargs: dict) -> None:
        self.table = table
        self.point = key is not None
        self.key = primary_key_of(key) if self.point else None
        self.pk_value = key
        self.include_initial = bool(optargs.get("include_initial"))
        self.include_types = bool(optargs.get("include_types"))
        self.include_states = bool(optargs.get("include_states"))


class Feed:
    def __init__(
        self, spec: FeedSpec, send: Callable[[dict], None], forget: Callable[[], None]
    ) -> None:
        self.spec = spec
        self.table = spec.table
        self._send = send  # writes one response for this feed's token
        self._forget = forget  # removes the feed from its connection
        self.buffer: list[dict] = []
        self.error: QueryError | None = None
        self.waiting = False  # a CONTINUE is parked
        self._flush_scheduled = False
        self.notes = [Note.ATOM_FEED if spec.point else Note.SEQUENCE_FEED]
        if spec.include_states:
            self.notes.append(Note.INCLUDES_STATES)

    def start(self) -> dict:
        """Subscribe and build the first batch (initial values / states, maybe empty)."""
        spec, first = self.spec, []
        if spec.include_states and spec.include_initial:
            first.append({"state": "initializing"})
        if spec.include_initial:
            rows = [spec.table.get(spec.pk_value)] if spec.point else spec.table.rows()
            for doc in rows:
                first.append(self._typed({"new_val": doc}, "initial"))
        if spec.include_states:
            first.append({"state": "ready"})
        self.table.subscribers.add(self)
        return response(ResponseType.SUCCESS_PARTIAL, first, self.notes)

    def _typed(self, change: dict, kind: str) -> dict:
        if self.spec.include_types:
            change["type"] = kind
        return change

    # --- called by the table -------------------------------------------------
    def on_change(self, key: Any, old: Any, new: Any) -> None:
        if self.spec.point and key != self.spec.key:
            return
        kind = "add" if old is None else "remove" if new is None else "change"
        self.buffer.append(self._typed({"old_val": old, "new_val": new}, kind))
        self._schedule_flush()

    def on_abort(self, message: str) -> None:
        self.error = op_failed(message)
        self._schedule_flush()

    # --- called by the connection --------------------------------------------
    def on_continue(self) -> None:
        self.waiting = True
        self.flush()

    def on_stop(self) -> None:
        """Answer a parked CONTINUE (as RethinkDB does) and unsubscribe."""
        if self.waiting:
            self.waiting = False
            self._send(response(ResponseType.SUCCESS_SEQUENCE, []))
        self.close()

    def close(self) -> None:
        self.table.subscribers.discard(self)
        self._forget()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self.waiting:
            return
        if self.buffer:
            batch, self.buffer = self.buffer, []
            self.waiting = False
            self._send(response(ResponseType.SUCCESS_PARTIAL, batch, self.notes))
        elif self.error is not None:
            self.waiting = False
            self._send(error_response(self.error))
            self.close()
