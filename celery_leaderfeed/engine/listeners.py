"""Event listeners, called in order on a thread of their own.

Listeners run on a dispatcher thread so that a slow or failing listener can never delay a
renewal: the engine only queues events. A listener that raises is logged and skipped.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
from collections.abc import Callable

from ..errors import ConfigurationError

__all__ = ["Event", "Listeners"]

logger = logging.getLogger("celery_leaderfeed")

Listener = Callable[..., object]


class Event(str, enum.Enum):
    """The original leaderfeed's events, in Python spelling, with the arguments passed."""

    #: ``(role: Role)`` - this member became leader or follower.
    NEW_STATE = "new_state"
    #: ``(leader_id: str | None)`` - the record names a different leader (None: vacant/unknown).
    NEW_LEADER = "new_leader"
    #: ``(change: object)`` - other data in the watched table/collection changed.
    CHANGE = "change"
    #: ``()`` - the change feed is open (again).
    SUBSCRIBE_STARTED = "subscribe_started"
    #: ``(error: Exception)`` - the change feed failed or broke; it is reopened with backoff.
    SUBSCRIBE_ERROR = "subscribe_error"
    #: ``(error: Exception)`` - a claim or renewal could not reach the store.
    HEARTBEAT_ERROR = "heartbeat_error"

    @classmethod
    def parse(cls, name: str | Event) -> Event:
        """Accept ``Event.NEW_STATE``, ``"new_state"`` or the original's ``"new state"``."""
        if isinstance(name, Event):
            return name
        try:
            return cls(str(name).strip().replace(" ", "_").lower())
        except ValueError:
            known = ", ".join(e.value for e in cls)
            raise ConfigurationError(f"unknown event {name!r} (known: {known})") from None


class Listeners:
    """Registry plus dispatcher thread for one feed's listeners."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._by_event: dict[Event, list[Listener]] = {event: [] for event in Event}
        # None is the stop marker.
        self._queue: queue.SimpleQueue[tuple[Event, tuple[object, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def add(self, event: str | Event, listener: Listener) -> Callable[[], None]:
        if not callable(listener):
            raise ConfigurationError(f"listener must be callable, got {listener!r}")
        parsed = Event.parse(event)
        with self._lock:
            self._by_event[parsed] = [*self._by_event[parsed], listener]
        return lambda: self.remove(parsed, listener)

    def remove(self, event: str | Event, listener: Listener) -> None:
        parsed = Event.parse(event)
        with self._lock:
            self._by_event[parsed] = [fn for fn in self._by_event[parsed] if fn is not listener]

    def emit(self, name: str, *args: object) -> None:
        """Queue an event (any thread); listeners see events in the order they were emitted."""
        self._queue.put((Event(name), args))

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Deliver what is queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        if thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, args = item
            with self._lock:
                listeners = self._by_event[event]
            for listener in listeners:
                try:
                    listener(*args)
                except Exception:
                    logger.exception("leaderfeed listener %r for %s raised", listener, event.value)
