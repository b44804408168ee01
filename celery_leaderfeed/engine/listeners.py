"""Event listeners, called in order on a thread of their own.

Listeners run on a dispatcher thread so that a slow or failing listener can never delay a
renewal: the engine only queues events. A listener that raises is logged and skipped.

A listener is called with the leading arguments of its event that it accepts: as many as it
takes positionally, or all of them if it takes ``*args`` or its signature cannot be read. So an
event can grow an argument without breaking listeners written for fewer: ``new_state`` passes
``(role, term)``, and a listener taking only ``role`` still gets just that.
"""

from __future__ import annotations

import enum
import inspect
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from ..errors import ConfigurationError

__all__ = ["Emit", "Event", "Listener", "Listeners"]

logger = logging.getLogger("celery_leaderfeed")

Listener = Callable[..., object]


class Event(str, enum.Enum):
    """The original leaderfeed's events, in Python spelling, with the arguments passed."""

    #: ``(role: Role, term: int)`` - this member became leader of ``term``, or stopped leading
    #: it (a listener taking one argument gets the role alone).
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


class Emit(Protocol):
    """Queues ``event`` with its arguments for the listeners (``emit(Event.CHANGE, change)``)."""

    def __call__(self, event: Event, /, *args: object) -> None: ...


def _arity(listener: Listener) -> int | None:
    """How many positional arguments ``listener`` takes (None: any number, or unknown)."""
    try:
        parameters = inspect.signature(listener).parameters.values()
    except (TypeError, ValueError):
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in positional for p in parameters)


class Listeners:
    """Registry plus dispatcher thread for one feed's listeners."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._lock = threading.Lock()
        #: Each listener with the number of arguments it takes (None: all of them).
        self._by_event: dict[Event, list[tuple[Listener, int | None]]] = {e: [] for e in Event}
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
            self._by_event[parsed] = [*self._by_event[parsed], (listener, _arity(listener))]
        return lambda: self.remove(parsed, listener)

    def remove(self, event: str | Event, listener: Listener) -> None:
        parsed = Event.parse(event)
        with self._lock:
            self._by_event[parsed] = [
                entry for entry in self._by_event[parsed] if entry[0] is not listener
            ]

    def emit(self, event: Event, /, *args: object) -> None:
        """Queue an event (any thread); listeners see events in the order they were emitted."""
        self._queue.put((event, args))

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
            for listener, arity in listeners:
                try:
                    listener(*args[:arity])
                except Exception:
                    logger.exception("leaderfeed listener %r for %s raised", listener, event.value)
