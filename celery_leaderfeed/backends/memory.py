"""In-process backend (``memory://NAME``): the reference implementation and a test double.

Members in one process that use the same URL share one :class:`MemoryStore`. It applies the
functions of :mod:`~celery_leaderfeed.backends.transitions` under a lock and delivers each write
to every open feed. It also lets tests inject the faults a real store has: an outage, broken
feeds, foreign data in the record, and a return to an earlier state (:meth:`MemoryStore.snapshot`,
:meth:`MemoryStore.restore`), with or without a change of the store's history marker.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import BackendUnavailable, ConfigurationError
from ..record import LeaderRecord, Observation, WriteResult, decode_record
from . import transitions
from .base import Backend, DataChanged, FeedEvent, RecordChanged, Subscription

__all__ = ["MemoryBackend", "MemoryStore", "StoreState", "memory_store"]

_BROKEN = object()


@dataclass(frozen=True, slots=True)
class StoreState:
    """Everything a :class:`MemoryStore` holds at one moment, for :meth:`MemoryStore.restore`."""

    records: Mapping[str, str]
    #: The history marker each record was written under.
    written_in: Mapping[str, int]
    entries: Mapping[str, Mapping[str, str]]
    #: Once-only marks per election: key -> (value, expiry by the store's clock).
    marks: Mapping[str, Mapping[str, tuple[str, float]]] = field(default_factory=dict)


class MemoryStore:
    """The shared state behind ``memory://`` URLs; safe to use from many threads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, str] = {}
        #: The store's history marker (like Redis' run id): it changes when the store goes back
        #: to an earlier state in a way a real store would reveal (a restart, a promotion).
        self.history = 0
        self._written_in: dict[str, int] = {}
        self._entries: dict[str, dict[str, str]] = {}
        #: Once-only marks per election: key -> (value, expiry by the store's clock).
        self._marks: dict[str, dict[str, tuple[str, float]]] = {}
        self._feeds: dict[str, list[_MemorySubscription]] = {}
        self._available = True
        #: Every write applied, in order, as (election name, operation): for assertions.
        self.operations: list[tuple[str, str]] = []

    # -- fault injection -------------------------------------------------------------------

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """Every call fails and every feed breaks until the block ends."""
        self.set_available(False)
        try:
            yield
        finally:
            self.set_available(True)

    def set_available(self, available: bool) -> None:
        with self._lock:
            self._available = available
            if not available:
                self._break_feeds()

    def break_feeds(self) -> None:
        """Break every open feed, as a dropped connection would."""
        with self._lock:
            self._break_feeds()

    def put_raw(self, name: str, raw: str | None) -> None:
        """Store anything as election ``name``'s record (None deletes it), and notify feeds."""
        with self._lock:
            if raw is None:
                self._records.pop(name, None)
            else:
                self._records[name] = raw
                self._written_in[name] = self.history
            self._notify(name, self._observe(name))

    def put_data(self, name: str, change: object) -> None:
        """Deliver a non-record change to election ``name``'s feeds (the ``change`` event)."""
        with self._lock:
            for feed in self._feeds.get(name, ()):
                feed.deliver(DataChanged(change))

    def snapshot(self) -> StoreState:
        """Everything stored now (records, schedule state, marks), to restore later."""
        with self._lock:
            return StoreState(
                dict(self._records),
                dict(self._written_in),
                {name: dict(entries) for name, entries in self._entries.items()},
                {name: dict(marks) for name, marks in self._marks.items()},
            )

    def restore(self, state: StoreState, *, new_history: bool = True) -> None:
        """Go back to ``state``, as a server restarted from an old snapshot or a replica that
        missed the last writes would. Every feed breaks (clients reconnect to the new process).

        ``new_history`` says whether the store reveals it: a real store's marker (Redis' run id
        and replication id) changes, so records written before are *suspect*. Without it the
        rollback is invisible to the members.
        """
        with self._lock:
            self._records = dict(state.records)
            self._written_in = dict(state.written_in)
            self._entries = {name: dict(entries) for name, entries in state.entries.items()}
            self._marks = {name: dict(marks) for name, marks in state.marks.items()}
            if new_history:
                self.history += 1
            self._break_feeds()

    # -- used by MemoryBackend ---------------------------------------------------------------

    def observe(self, name: str) -> Observation:
        with self._lock:
            self._check()
            return self._observe(name)

    def apply(
        self, name: str, operation: str, change: Callable[[Observation, float], LeaderRecord | None]
    ) -> WriteResult:
        """Apply one compare-and-set atomically and tell the feeds about a successful write."""
        with self._lock:
            self._check()
            current = self._observe(name)
            record = change(current, self.clock())
            if record is None:
                return WriteResult(False, current)
            self._records[name] = record.to_json()
            self._written_in[name] = self.history
            self.operations.append((name, operation))
            written = Observation(record, store_time=record.renewed_at)
            self._notify(name, written)
            return WriteResult(True, written, over_suspect=current.suspect)

    def entries(self, name: str) -> dict[str, str]:
        with self._lock:
            self._check()
            return dict(self._entries.get(name, {}))

    def mark_once(self, name: str, key: str, value: str, ttl: float) -> str | None:
        with self._lock:
            self._check()
            now = self.clock()
            marks = self._marks.setdefault(name, {})
            held = marks.get(key)
            if held is not None and held[1] > now:
                return held[0]
            marks[key] = (value, now + ttl)
            self.operations.append((name, "mark_once"))
            return None

    def write_entry(
        self, name: str, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        with self._lock:
            self._check()
            stored = self._entries.get(name, {}).get(entry)
            if not transitions.entry_written(self._observe(name), term, token, stored, expected):
                return False
            self._entries.setdefault(name, {})[entry] = new
            self.operations.append((name, "write_entry"))
            return True

    def subscribe(self, name: str) -> _MemorySubscription:
        with self._lock:
            self._check()
            feed = _MemorySubscription(self, name)
            self._feeds.setdefault(name, []).append(feed)
            return feed

    def unsubscribe(self, feed: _MemorySubscription) -> None:
        with self._lock:
            feeds = self._feeds.get(feed.name, [])
            if feed in feeds:
                feeds.remove(feed)

    # -- internals (called with the lock held) -----------------------------------------------

    def _check(self) -> None:
        if not self._available:
            raise BackendUnavailable("memory store is unavailable (injected outage)")

    def _observe(self, name: str) -> Observation:
        raw = self._records.get(name)
        if raw is None:
            return Observation(None, store_time=self.clock())
        suspect = self._written_in.get(name, self.history) != self.history
        try:
            return Observation(decode_record(raw), store_time=self.clock(), suspect=suspect)
        except ValueError:
            return Observation(None, corrupt=True, store_time=self.clock())

    def _notify(self, name: str, observation: Observation) -> None:
        for feed in self._feeds.get(name, ()):
            feed.deliver(RecordChanged(observation))

    def _break_feeds(self) -> None:
        for feeds in self._feeds.values():
            for feed in feeds:
                feed.deliver(_BROKEN)
            feeds.clear()


class _MemorySubscription(Subscription):
    def __init__(self, store: MemoryStore, name: str) -> None:
        self.store = store
        self.name = name
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._broken = False

    def deliver(self, item: object) -> None:
        self._queue.put(item)

    def poll(self, timeout: float) -> list[FeedEvent]:
        if self._broken:
            raise BackendUnavailable("memory feed is broken")
        events: list[FeedEvent] = []
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            while True:
                if item is _BROKEN:
                    self._broken = True
                    if events:  # hand over what arrived first; raise on the next poll
                        return events
                    raise BackendUnavailable("memory feed is broken")
                assert isinstance(item, RecordChanged | DataChanged)
                events.append(item)
                item = self._queue.get_nowait()
        except queue.Empty:
            return events

    def close(self) -> None:
        self.store.unsubscribe(self)
        self._queue.put(_BROKEN)


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def memory_store(url: str = "memory://") -> MemoryStore:
    """The process-wide store that ``url`` names (created on first use)."""
    parts = urlsplit(url)
    key = (parts.netloc + parts.path).strip("/")
    with _stores_lock:
        return _stores.setdefault(key, MemoryStore())


class MemoryBackend(Backend):
    """Backend for ``memory://NAME`` URLs; pass ``options={"store": MemoryStore(...)}``
    to use a private store (e.g. one with a fake clock)."""

    schemes = ("memory",)
    option_names = frozenset({"store"})
    shared_across_processes = False

    def _configure(self) -> None:
        store = self.options.get("store")
        if store is not None and not isinstance(store, MemoryStore):
            raise ConfigurationError(f"option 'store' must be a MemoryStore, got {store!r}")
        self.store: MemoryStore = store or memory_store(self.url)

    def _connect(self) -> None:
        self.store.observe(self.name)  # fails during an injected outage, like a real connect

    def _create(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _read(self) -> Observation:
        return self.store.observe(self.name)

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        return self.store.apply(
            self.name,
            "claim",
            lambda current, now: transitions.claimed(
                current, expected_version, holder, token, min_term, min_version, now
            ),
        )

    def _renew(self, term: int, token: str) -> WriteResult:
        return self.store.apply(
            self.name, "renew", lambda current, now: transitions.renewed(current, term, token, now)
        )

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        return self.store.apply(
            self.name,
            "resign",
            lambda current, now: transitions.resigned(current, term, token, nominee, now),
        )

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        return self.store.apply(
            self.name,
            "nominate",
            lambda current, now: transitions.nominated(current, expected_version, nominee, now),
        )

    def _subscribe(self) -> Subscription:
        return self.store.subscribe(self.name)

    def _read_entries(self) -> dict[str, str]:
        return self.store.entries(self.name)

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        return self.store.write_entry(self.name, term, token, entry, expected, new)

    def _mark_once(self, key: str, value: str, ttl: float) -> str | None:
        return self.store.mark_once(self.name, key, value, ttl)
