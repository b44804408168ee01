"""MongoDB backend (``mongodb://``, ``mongodb+srv://``): one document per election.

The record of election ``NAME`` is the document ``{_id: NAME, format, holder, token, term,
version, nominee, renewed_at, schedule}`` in the collection ``collection`` (default
``leaderfeed``). Every write is one ``find_one_and_update`` whose filter is the compare of
:mod:`~celery_leaderfeed.backends.transitions` and whose update is an aggregation pipeline, so
the new term and version are computed from the stored ones and ``renewed_at`` comes from the
server's ``$$NOW``, all in one atomic step. Claiming over foreign data replaces the document
only while it is still foreign. Schedule entries live in the same document under ``schedule``
(keys escaped), so a fenced entry write is one filtered update too; record reads and writes
project ``schedule`` away. Needs MongoDB >= 4.2; majority write and read concern are used
when the server is a replica set or mongos.

Members hear about writes in one of two ways, chosen at connect from ``hello``
(``notify="auto"``) or forced with ``notify``:

* ``changestream`` (replica sets, sharded clusters, Atlas): a change stream on the collection,
  opened at "now". Each state of the record is rebuilt exactly from the events (an update
  event carries only what changed), so every write is delivered, in order.
* ``capped`` (standalone servers; the original leaderfeed's design): after each successful
  write the writer inserts the new record into the capped collection ``capped_collection``
  (default ``<collection>_events``; 100,000 bytes, 20 documents), which members follow with a
  tailable await cursor. Documents already there when a member subscribes are skipped, so old
  history is never replayed. A lost announcement only delays followers: the engine reads the
  record whenever the feed looks deaf. Subscribing also makes sure the capped collection
  exists: a server that lost it (a restart) would otherwise get a plain one from the next
  announcement, which cannot be tailed.

Other documents in the watched collection are reported as ``change`` events (the raw change
event, or the inserted capped document). A broken stream or dead cursor makes ``poll`` raise;
the engine then reads at the heartbeat interval and subscribes again with backoff.
"""

from __future__ import annotations

import abc
import logging
import re
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import unquote, urlsplit

import pymongo
from pymongo import CursorType, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from ..errors import BackendUnavailable, ConfigurationError
from ..record import (
    CORRUPT_VERSION,
    MISSING_VERSION,
    RECORD_FORMAT,
    Observation,
    WriteResult,
    decode_record,
)
from ..urls import redact_urls_in, url_scheme
from .base import Backend, DataChanged, FeedEvent, RecordChanged, Subscription

__all__ = ["MongoBackend"]

logger = logging.getLogger(__name__)

Doc = dict[str, Any]

_RECORD_FIELDS = ("format", "holder", "token", "term", "version", "nominee", "renewed_at")
_NOTIFY_MODES = ("auto", "changestream", "capped")
# The server's clock in float seconds. $toLong is MongoDB's documented Date -> milliseconds
# and sidesteps date comparison and $subtract, which SecantusDB gets wrong.
_NOW = {"$divide": [{"$toLong": "$$NOW"}, 1000]}
_NEXT_VERSION = {"$toLong": {"$add": ["$version", 1]}}
# One getMore waits at most this long; poll() strings several together within its timeout.
_AWAIT_SECONDS = 0.1
_NAMESPACE_EXISTS = 48
_INF = float("inf")
_KEY_ESCAPES = re.compile(r"[%.$\x00]")


def _lit(value: object) -> Doc:
    return {"$literal": value}  # member ids may start with "$": never let one be a field path


def _set(**fields: object) -> list[Doc]:
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
_VALID = {
    "$and": [
        {"$eq": ["$format", RECORD_FORMAT]},
        _count("$term"),
        _count("$version"),
        *(_typed(f, "string", "null", "missing") for f in ("$holder", "$token", "$nominee")),
        {"$eq": [_typed("$holder", "null", "missing"), _typed("$token", "null", "missing")]},
        {"$cond": [_typed("$renewed_at", "int", "long", "double"), _FINITE, _ABSENT]},
    ]
}


def _entry_key(entry: str) -> str:
    """Schedule entry name -> field name without ``.``, ``$`` or NUL (``%``-escaped)."""
    return _KEY_ESCAPES.sub(lambda m: f"%{ord(m.group()):02X}", entry) or "%"


def _entry_name(key: str) -> str:
    return "" if key == "%" else unquote(key)


def _observation(doc: object, store_time: float | None = None) -> Observation:
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


def _name_option(options: Mapping[str, Any], key: str, default: str) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or not value or re.search(r"[\x00$]", value):
        raise ConfigurationError(f"option {key!r} must be a name without '$', got {value!r}")
    return value


def _count_option(options: Mapping[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"option {key!r} must be a positive integer, got {value!r}")
    return value


class MongoBackend(Backend):
    """Backend for ``mongodb://[user:password@]host[:port][,...]/[database][?options]`` and
    ``mongodb+srv://``.

    Options: ``database`` (default: the URL's, else ``"leaderfeed"``), ``collection``
    (``"leaderfeed"``), ``notify`` (``"auto"``, ``"changestream"`` or ``"capped"``), and for
    capped mode ``capped_collection`` (``"<collection>_events"``), ``collection_size_bytes``
    (100000) and ``collection_max_docs`` (20).
    """

    schemes = ("mongodb", "mongodb+srv")
    connection_errors = (PyMongoError,)
    option_names = frozenset(
        {"database", "collection", "notify", "capped_collection"}
        | {"collection_size_bytes", "collection_max_docs"}
    )

    def _configure(self) -> None:
        opts = self.options
        self.database_name = _name_option(opts, "database", self._url_database() or "leaderfeed")
        self.collection_name = _name_option(opts, "collection", "leaderfeed")
        self.capped_name = _name_option(opts, "capped_collection", f"{self.collection_name}_events")
        self.notify: str = opts.get("notify", "auto")
        if self.notify not in _NOTIFY_MODES:
            raise ConfigurationError(
                f"option 'notify' must be one of {_NOTIFY_MODES}, got {self.notify!r}"
            )
        self.size_bytes = _count_option(opts, "collection_size_bytes", 100_000)
        self.max_docs = _count_option(opts, "collection_max_docs", 20)
        #: "changestream" or "capped", decided at connect.
        self.mode: str | None = None
        self._capped_ready = False  # capped mode: announce only once the capped collection exists
        self._client: MongoClient[Doc] | None = None
        self._records: Collection[Doc] | None = None
        self._events: Collection[Doc] | None = None

    def _url_database(self) -> str | None:
        if url_scheme(self.url) == "mongodb":  # parsing mongodb+srv:// would need DNS
            try:
                database = parse_uri(self.url)["database"]
            except (PyMongoError, ValueError, TypeError) as exc:
                detail = redact_urls_in(str(exc))
                raise ConfigurationError(
                    f"invalid MongoDB URL {self.display_url!r}: {detail}"
                ) from None
            return database if isinstance(database, str) else None
        return unquote(urlsplit(self.url).path.lstrip("/")) or None

    def _deadline(self) -> AbstractContextManager[None]:
        """Bound everything inside by ``timeout``; nested blocks share the outer deadline."""
        return pymongo.timeout(self.timeout)

    def _collections(self) -> tuple[Collection[Doc], Collection[Doc]]:
        if self._records is None or self._events is None:
            raise BackendUnavailable(f"{self!r} is not connected")
        return self._records, self._events

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._client is None:  # here, not in __init__: pymongo clients are not fork-safe
            millis = max(1, int(self.timeout * 1000))
            self._client = MongoClient(
                self.url,
                serverSelectionTimeoutMS=millis,
                connectTimeoutMS=millis,
                appname=f"leaderfeed:{self.name}",
            )
        with self._deadline():
            hello = self._client.admin.command("hello")
        replicated = "setName" in hello or hello.get("msg") == "isdbgrid"
        if self.notify == "changestream" and not replicated:
            raise ConfigurationError(
                f"option notify='changestream' needs a replica set or mongos, but "
                f"{self.display_url} is a standalone server: use notify='capped' or 'auto'"
            )
        self.mode = "changestream" if replicated and self.notify != "capped" else "capped"
        self._capped_ready = False
        database = self._client.get_database(
            self.database_name,
            write_concern=WriteConcern("majority") if replicated else None,
            read_concern=ReadConcern("majority") if replicated else None,
        )
        self._records = database[self.collection_name]
        self._events = database[self.capped_name]

    def _create(self) -> None:
        records, events = self._collections()
        with self._deadline():
            self._ensure_collection(records)
            if self.mode == "capped":
                self._ensure_capped(events)

    def _ensure_capped(self, events: Collection[Doc]) -> None:
        """Create the capped collection, also after a server lost it: then the next
        announcement re-creates it as a plain collection, which is replaced here as long as
        it holds nothing but announcements."""
        found = next(iter(events.database.list_collections(filter={"name": events.name})), None)
        if found is not None and not found.get("options", {}).get("capped"):
            if events.find_one({"leaderfeed": {"$ne": RECORD_FORMAT}}, projection={"_id": 1}):
                raise ConfigurationError(
                    f"option capped_collection: {events.full_name!r} on {self.display_url} "
                    f"holds other data and is not capped; drop it or name another collection"
                )
            events.drop()
        self._ensure_collection(events, capped=True, size=self.size_bytes, max=self.max_docs)
        self._capped_ready = True

    def _ensure_collection(self, collection: Collection[Doc], **options: Any) -> None:
        """Create ``collection``, or check the one that a racing member (or the user) made."""
        database = collection.database
        try:
            database.create_collection(collection.name, check_exists=False, **options)
        except OperationFailure as exc:
            if exc.code != _NAMESPACE_EXISTS:
                raise
        found = next(iter(database.list_collections(filter={"name": collection.name})), None)
        existing = (found or {}).get("options", {})
        if options.get("capped") and not existing.get("capped"):  # an announcement got in first
            raise BackendUnavailable(
                f"{collection.full_name!r} was re-created before it was capped"
            )

    def _close(self) -> None:
        client, self._client = self._client, None
        self._records = self._events = None
        if client is not None:
            client.close()

    # -- the record ----------------------------------------------------------------------------

    def _read(self) -> Observation:
        """The record and the server's clock in one round trip ($facet yields one result
        even when the document is missing)."""
        records, _ = self._collections()
        pipeline: list[Doc] = [{"$match": {"_id": self.name}}, {"$project": {"schedule": 0}}]
        pipeline += [{"$facet": {"doc": [{"$limit": 1}]}}, {"$set": {"now": _NOW}}]
        with self._deadline():
            rows = list(records.aggregate(pipeline))
        if not rows:
            return _observation(None)
        return _observation((rows[0]["doc"] or [None])[0], float(rows[0]["now"]))

    def _cas(self, where: Doc, update: list[Doc], *, upsert: bool = False) -> WriteResult:
        """Apply ``update`` if the record matches ``where``; on a miss, report what is stored."""
        records, events = self._collections()
        with self._deadline():
            try:
                doc = records.find_one_and_update(
                    {"_id": self.name, **where},
                    update,
                    projection={"schedule": False},
                    upsert=upsert,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:  # claiming a missing record: another insert won
                doc = None
            if doc is None:
                return WriteResult(False, self._read())
            record = _observation(doc).record
            if self.mode == "capped" and self._capped_ready:
                self._announce(events, doc)
            store_time = None if record is None else record.renewed_at  # the server's $$NOW
            return WriteResult(True, Observation(record, store_time=store_time))

    def _announce(self, events: Collection[Doc], doc: Doc) -> None:
        record = {k: v for k, v in doc.items() if k != "_id"}
        try:
            events.insert_one(
                {"leaderfeed": RECORD_FORMAT, "election": self.name, "record": record}
            )
        except PyMongoError as exc:  # the write itself happened; followers catch up by reading
            logger.warning("leaderfeed %r: announcing a write failed: %s", self.name, exc)

    @staticmethod
    def _holding(term: int, token: str) -> Doc:
        held = [{"$eq": ["$term", term]}, {"$eq": ["$token", _lit(token)]}]
        return {"$expr": {"$and": [_VALID, *held]}}

    @staticmethod
    def _at_version(version: int) -> Doc:
        return {"$expr": {"$and": [_VALID, {"$eq": ["$version", version]}]}}

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        update = self._claimed(holder, token, min_term, min_version)
        if expected_version == MISSING_VERSION:
            # Matches nothing, so the upsert inserts {_id: NAME}, or hits the duplicate key
            # when any document - ours or foreign - is already there.
            return self._cas({"$expr": _lit(False)}, update, upsert=True)
        if expected_version == CORRUPT_VERSION:
            # Replace the document only while it is still foreign: a claim that got in first
            # made it a valid record. Nothing of the foreign document is kept.
            replace = [{"$replaceWith": {"_id": "$_id"}}, *update]
            return self._cas({"$expr": {"$not": [_VALID]}}, replace)
        return self._cas(self._at_version(expected_version), update)

    @staticmethod
    def _claimed(holder: str, token: str, min_term: int, min_version: int) -> list[Doc]:
        """transitions.claimed: the stored term/version + 1, or for a new record the store
        clock in milliseconds, computed from renewed_at exactly as fresh_term() would."""
        fresh = {"$toLong": {"$multiply": ["$renewed_at", 1000]}}  # $toLong truncates

        def raised(field: str, floor: int) -> Doc:  # $add of a missing field gives null
            return {"$max": [{"$ifNull": [{"$toLong": {"$add": [field, 1]}}, fresh]}, floor]}

        claim: Doc = {"term": raised("$term", min_term), "version": raised("$version", min_version)}
        claim.update(format=RECORD_FORMAT, holder=_lit(holder), token=_lit(token), nominee=None)
        return [*_set(renewed_at=_NOW), {"$set": claim}]

    def _renew(self, term: int, token: str) -> WriteResult:
        nominee = {"$cond": [{"$eq": ["$nominee", "$holder"]}, None, "$nominee"]}
        update = _set(version=_NEXT_VERSION, nominee=nominee, renewed_at=_NOW)
        return self._cas(self._holding(term, token), update)

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        update = _set(
            holder=None, token=None, nominee=_lit(nominee), version=_NEXT_VERSION, renewed_at=_NOW
        )
        return self._cas(self._holding(term, token), update)

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        update = _set(nominee=_lit(nominee), version=_NEXT_VERSION, renewed_at=_NOW)
        return self._cas(self._at_version(expected_version), update)

    # -- schedule state ------------------------------------------------------------------------

    def _read_entries(self) -> dict[str, str]:
        records, _ = self._collections()
        with self._deadline():
            doc = records.find_one({"_id": self.name}, projection={"schedule": True})
        schedule = (doc or {}).get("schedule")
        if not isinstance(schedule, Mapping):
            return {}
        return {_entry_name(k): v for k, v in schedule.items() if isinstance(v, str)}

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        records, _ = self._collections()
        field = f"schedule.{_entry_key(entry)}"
        stored = {"$exists": False} if expected is None else {"$eq": expected}
        where = {"_id": self.name, **self._holding(term, token), field: stored}
        with self._deadline():
            return records.update_one(where, {"$set": {field: new}}).matched_count == 1

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        records, events = self._collections()
        with self._deadline():
            if self.mode == "changestream":
                return _ChangeStreamFeed(self, records)
            return _CappedFeed(self, events)


class _Feed(Subscription):
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
                if remaining < _AWAIT_SECONDS:  # no room for another getMore in the budget
                    if not fetched:
                        self._closed.wait(max(0.0, remaining))
                    return []
                with self._lock:
                    if self._closed.is_set():
                        break
                    with pymongo.timeout(_AWAIT_SECONDS + self._backend.timeout):
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
        with self._lock:  # waits for a getMore in flight (at most _AWAIT_SECONDS)
            try:
                with pymongo.timeout(self._backend.timeout):
                    self._release()
            except PyMongoError:  # the connection may already be gone
                logger.debug("error while closing a MongoDB feed", exc_info=True)


class _ChangeStreamFeed(_Feed):
    """Rebuilds each state of the record exactly: an insert or replace carries the whole
    document, an update only what it changed, applied in order to the state before it. Only
    when an update comes first does it fall back to the looked-up document (which may already
    include later writes; older states rebuilt after it are then dropped)."""

    def __init__(self, backend: MongoBackend, records: Collection[Doc]) -> None:
        super().__init__(backend)
        ours = {"$eq": ["$documentKey._id", _lit(backend.name)]}
        has_doc = {"$eq": [{"$type": "$fullDocument"}, "object"]}
        record_only = {f: f"$fullDocument.{f}" for f in ("_id", *_RECORD_FIELDS)}
        # Our record, and anything that is not another election's; our record's schedule
        # stays behind (decode_record reads only the record fields).
        others = {"fullDocument.format": {"$ne": RECORD_FORMAT}}
        wanted = {"$match": {"$or": [{"documentKey._id": backend.name}, others]}}
        trimmed = {"$cond": [{"$and": [ours, has_doc]}, record_only, "$fullDocument"]}
        # The aggregate runs here, so the stream is open (at the current time) on return.
        self._stream = records.watch(
            [wanted, {"$set": {"fullDocument": trimmed}}],
            full_document="updateLookup",
            max_await_time_ms=int(_AWAIT_SECONDS * 1000),
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
                k: v for k, v in delta.get("updatedFields", {}).items() if k in _RECORD_FIELDS
            }
            removed = set(delta.get("removedFields", ())) & set(_RECORD_FIELDS)
            if not changed and not removed:
                return None  # a schedule entry
            kept = {k: v for k, v in self._doc.items() if k not in removed}
            self._doc = {**kept, **changed}
        elif operation in ("insert", "replace", "update"):
            self._doc = doc.get("fullDocument")  # None if it was deleted since (update only)
        else:  # deleted, or its collection went away
            self._doc = None
        return self._record_changed(_observation(self._doc))

    def _release(self) -> None:
        self._stream.close()


class _CappedFeed(_Feed):
    def __init__(self, backend: MongoBackend, events: Collection[Doc]) -> None:
        super().__init__(backend)
        try:
            backend._ensure_capped(events)
        except ConfigurationError as exc:  # not the engine's to handle here: report, retry
            raise BackendUnavailable(str(exc)) from None
        # Whatever is there now is history: remember it and skip it when the cursor shows it.
        self._skip = {doc["_id"] for doc in events.find({}, projection={"_id": True})}
        if not self._skip:  # MongoDB kills a tailable cursor on an empty collection
            marker = events.insert_one({"leaderfeed": RECORD_FORMAT, "election": None})
            self._skip.add(marker.inserted_id)
        cursor: Cursor[Doc] = events.find(cursor_type=CursorType.TAILABLE_AWAIT)
        self._cursor: Cursor[Doc] = cursor.max_await_time_ms(int(_AWAIT_SECONDS * 1000))

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
        return self._record_changed(_observation(record))

    def _release(self) -> None:
        self._cursor.close()
