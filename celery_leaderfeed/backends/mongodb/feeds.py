"""Change feeds of the MongoDB backend: a change stream, or a tailable cursor on a capped
collection, each read one bounded getMore at a time."""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pymongo
from pymongo import CursorType
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.errors import PyMongoError

from ...errors import BackendUnavailable, ConfigurationError
from ...record import RECORD_FORMAT, Observation
from ..base import DataChanged, FeedEvent, RecordChanged, Subscription
from .documents import AWAIT_SECONDS, RECORD_FIELDS, Doc, literal, observation_of

if TYPE_CHECKING:
    from .backend import MongoBackend

__all__ = ["CappedFeed", "ChangeStreamFeed", "Feed"]

logger = logging.getLogger(__name__)


class Feed(Subscription):
    """One getMore at a time, each bounded; ``close()`` may come from any thread."""

    def __init__(self, backend: MongoBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()  # held around each getMore, so close() never races one
        self._closed = threading.Event()
        self._last: Observation | None = None

    @abc.abstractmethod
    def _next(self) -> Doc | None:
        """The next document: buffered, or from at most one getMore (None: nothing came)."""

    @abc.abstractmethod
    def _event(self, doc: Doc) -> FeedEvent | None:
        """What a document from the feed means for this election (None: nothing)."""

    @abc.abstractmethod
    def _release(self) -> None: ...

    def poll(self, timeout: float) -> list[FeedEvent]:
        deadline = time.monotonic() + timeout
        fetched = False
        with self._backend.mapped_errors("change feed"):
            while not self._closed.is_set():
                remaining = deadline - time.monotonic()
                if remaining < AWAIT_SECONDS:  # no room for another getMore in the budget
                    if not fetched:
                        self._closed.wait(max(0.0, remaining))
                    return []
                with self._lock:
                    if self._closed.is_set():
                        break
                    with pymongo.timeout(AWAIT_SECONDS + self._backend.timeout):
                        doc = self._next()
                fetched = True
                event = None if doc is None else self._event(doc)
                if event is not None:  # return at once: asking for more may wait out a getMore
                    return [event]
        raise BackendUnavailable("the change feed is closed")

    def _record_changed(self, observation: Observation) -> RecordChanged | None:
        """Drop repeats (schedule writes, merged look-ups) and states older than the last."""
        last = self._last
        older = (
            last is not None
            and last.record is not None
            and observation.record is not None
            and observation.record.version < last.record.version
        )
        if older or observation.same_state(last):
            return None
        self._last = observation
        return RecordChanged(observation)

    def close(self) -> None:
        self._closed.set()
        with self._lock:  # waits for a getMore in flight (at most AWAIT_SECONDS)
            try:
                with pymongo.timeout(self._backend.timeout):
                    self._release()
            except PyMongoError:  # the connection may already be gone
                logger.debug("error while closing a MongoDB feed", exc_info=True)


class ChangeStreamFeed(Feed):
    """Rebuilds each state of the record exactly: an insert or replace carries the whole
    document, an update only what it changed, applied in order to the state before it. Only
    when an update comes first does it fall back to the looked-up document (which may already
    include later writes; older states rebuilt after it are then dropped)."""

    def __init__(self, backend: MongoBackend, records: Collection[Doc]) -> None:
        super().__init__(backend)
        ours = {"$eq": ["$documentKey._id", literal(backend.name)]}
        has_doc = {"$eq": [{"$type": "$fullDocument"}, "object"]}
        record_only = {f: f"$fullDocument.{f}" for f in ("_id", *RECORD_FIELDS)}
        # Our record, and anything that is not another election's; our record's schedule
        # stays behind (decode_record reads only the record fields).
        others = {"fullDocument.format": {"$ne": RECORD_FORMAT}}
        wanted = {"$match": {"$or": [{"documentKey._id": backend.name}, others]}}
        trimmed = {"$cond": [{"$and": [ours, has_doc]}, record_only, "$fullDocument"]}
        # The aggregate runs here, so the stream is open (at the current time) on return.
        self._stream = records.watch(
            [wanted, {"$set": {"fullDocument": trimmed}}],
            full_document="updateLookup",
            max_await_time_ms=int(AWAIT_SECONDS * 1000),
        )
        self._doc: Doc | None = None  # the record as the last event left it

    def _next(self) -> Doc | None:
        change = self._stream.try_next()
        if change is None and not self._stream.alive:
            raise BackendUnavailable("the change stream ended")
        return change

    def _event(self, doc: Doc) -> FeedEvent | None:
        operation = doc.get("operationType")
        if operation == "invalidate":
            raise BackendUnavailable("the change stream was invalidated")
        gone = operation in ("drop", "rename", "dropDatabase")  # events without a document
        if not gone and (doc.get("documentKey") or {}).get("_id") != self._backend.name:
            return DataChanged(doc)
        if operation == "update" and self._doc is not None:
            delta = doc.get("updateDescription") or {}
            changed = {
                k: v for k, v in delta.get("updatedFields", {}).items() if k in RECORD_FIELDS
            }
            removed = set(delta.get("removedFields", ())) & set(RECORD_FIELDS)
            if not changed and not removed:
                return None  # a schedule entry
            kept = {k: v for k, v in self._doc.items() if k not in removed}
            self._doc = {**kept, **changed}
        elif operation in ("insert", "replace", "update"):
            self._doc = doc.get("fullDocument")  # None if it was deleted since (update only)
        else:  # deleted, or its collection went away
            self._doc = None
        return self._record_changed(observation_of(self._doc))

    def _release(self) -> None:
        self._stream.close()


class CappedFeed(Feed):
    def __init__(self, backend: MongoBackend, events: Collection[Doc]) -> None:
        super().__init__(backend)
        try:
            backend.ensure_capped(events)
        except ConfigurationError as exc:  # not the engine's to handle here: report, retry
            raise BackendUnavailable(str(exc)) from None
        # Whatever is there now is history: remember it and skip it when the cursor shows it.
        self._skip = {doc["_id"] for doc in events.find({}, projection={"_id": True})}
        if not self._skip:  # MongoDB kills a tailable cursor on an empty collection
            marker = events.insert_one({"leaderfeed": RECORD_FORMAT, "election": None})
            self._skip.add(marker.inserted_id)
        cursor: Cursor[Doc] = events.find(cursor_type=CursorType.TAILABLE_AWAIT)
        self._cursor: Cursor[Doc] = cursor.max_await_time_ms(int(AWAIT_SECONDS * 1000))

    def _next(self) -> Doc | None:
        try:
            return self._cursor.next()
        except StopIteration:
            if not self._cursor.alive:
                raise BackendUnavailable("the tailable cursor died") from None
            return None

    def _event(self, doc: Doc) -> FeedEvent | None:
        if doc.get("_id") in self._skip:
            self._skip.discard(doc.get("_id"))
            return None
        if doc.get("leaderfeed") != RECORD_FORMAT:
            return DataChanged(doc)
        if doc.get("election") != self._backend.name:
            return None  # another election's announcement, or a marker
        record = doc.get("record")
        if not isinstance(record, Mapping):
            return self._record_changed(Observation(None, corrupt=True))
        return self._record_changed(observation_of(record))

    def _release(self) -> None:
        self._cursor.close()
