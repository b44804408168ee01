"""Change feeds of the RethinkDB backend: a point feed on the record and a table feed, each
on a connection of its own read by a thread of its own, into one queue ``poll`` waits on."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import BackendUnavailable
from ..base import DataChanged, FeedEvent, RecordChanged, Subscription
from .connection import bound, close_quietly, describe, socket_of
from .queries import Term, observation_of

if TYPE_CHECKING:
    from .backend import RethinkBackend

__all__ = ["RethinkSubscription"]


class _Broken:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _record_event(change: dict[str, Any]) -> FeedEvent | None:
    return RecordChanged(observation_of(change["new_val"], None)) if "new_val" in change else None


class RethinkSubscription(Subscription):
    """Two changefeeds, each on a connection of its own read by a thread of its own, into one
    queue that ``poll`` waits on."""

    def __init__(self, backend: RethinkBackend, deadline: float) -> None:
        self._backend = backend
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._feeds: list[tuple[Any, socket.socket, Any, Callable[..., FeedEvent | None]]] = []
        self._broken: _Broken | None = None
        self._closed = self._reading = False
        try:
            point = self._open(
                backend.record_query().changes(include_initial=True, squash=False),
                _record_event,
                deadline,
            )
            # The initial value proves the feed is registered before the engine's read. It is
            # not passed on: that read supersedes it, and a stale "missing" (no version to
            # order it by) arriving after the engine's first claim would unseat the claimer.
            point.next(wait=backend.time_left(deadline))
            self._open(backend.table_query().changes(squash=False), backend.data_event, deadline)
        except BaseException:
            self.close()
            raise
        self._reading = True
        for feed in self._feeds:
            name = f"leaderfeed-rethinkdb[{backend.name}]"
            threading.Thread(target=self._read, args=feed, name=name, daemon=True).start()

    def _open(self, query: Term, convert: Callable[..., FeedEvent | None], deadline: float) -> Any:
        """Run the changefeed ``query`` on a connection of its own; return the cursor."""
        connection = self._backend.open_connection(deadline)
        try:
            sock = socket_of(connection)
            bound(sock, self._backend.time_left(deadline))
            cursor = query.run(connection)
        except BaseException:
            close_quietly(connection)
            raise
        self._feeds.append((connection, sock, cursor, convert))
        return cursor

    def _read(self, connection: Any, sock: socket.socket, cursor: Any, convert: Any) -> None:
        try:
            bound(sock, 0)  # from now on only close() ends the wait
            while True:
                change = cursor.next()
                if not isinstance(change, dict) or "error" in change:
                    # e.g. the server's change buffer overflowed: changes were lost
                    raise BackendUnavailable(f"the changefeed reported {change!r}")
                event = convert(change)
                if event is not None:
                    self._queue.put(event)
        except Exception as exc:  # noqa: BLE001 - whatever ends the cursor ends the feed
            self._queue.put(_Broken(exc))
        finally:
            close_quietly(connection)

    def poll(self, timeout: float) -> list[FeedEvent]:
        if self._closed:
            raise BackendUnavailable("the change feed is closed")
        events: list[FeedEvent] = []
        try:
            if self._broken is None:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                while isinstance(item, RecordChanged | DataChanged):
                    events.append(item)
                    item = self._queue.get_nowait()
                assert isinstance(item, _Broken)
                self._broken = item
        except queue.Empty:
            return events
        if events:  # hand over what arrived first; raise on the next poll
            return events
        error = self._broken.error
        if isinstance(error, BackendUnavailable):
            raise error
        detail = f"the changefeed on {self._backend.display_url} broke: {describe(error)}"
        raise BackendUnavailable(self._backend.redact(detail)) from self._backend.shown_cause(error)

    def close(self) -> None:
        self._closed = True
        self._queue.put(_Broken(BackendUnavailable("the change feed is closed")))  # wakes poll
        for connection, sock, _, _ in self._feeds:
            if not self._reading:  # no thread owns the connection yet
                close_quietly(connection)
            with contextlib.suppress(OSError):  # already closed
                # Wakes the thread, which closes the connection. Not SHUT_RDWR: the server
                # would hang up first and the driver's own close would log ENOTCONN.
                sock.shutdown(socket.SHUT_RD)
