"""``MongoBackend``: the record as one document, changed by filtered ``find_one_and_update``.

Once-only marks live in ``<collection>_marks``, one document per mark with ``_id``
``NAME/KEY`` (election names have no ``/``), its ``value`` and ``expires_at``, a date from the
server's clock under a TTL index. The TTL monitor deletes expired marks only every 60 s or so,
so a mark whose ``expires_at`` has passed counts as absent and is replaced in the same atomic
``find_one_and_update`` that would have inserted it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import unquote, urlsplit

import pymongo
from pymongo import MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import (
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.read_concern import ReadConcern
from pymongo.uri_parser import parse_uri
from pymongo.write_concern import WriteConcern

from ...errors import BackendUnavailable, ConfigurationError
from ...record import CORRUPT_VERSION, MISSING_VERSION, RECORD_FORMAT, Observation, WriteResult
from ...urls import url_error, url_scheme, without_userinfo
from ..base import Backend, Refusal, Subscription
from ..transitions import CLOCK_LAG_MS
from .documents import (
    MARK_TTL_INDEX,
    NAMESPACE_EXISTS,
    NEXT_VERSION,
    NOTIFY_MODES,
    NOW,
    NOW_MS,
    VALID_RECORD,
    Doc,
    count_option,
    entry_key,
    entry_name,
    literal,
    name_option,
    observation_of,
    set_fields,
)
from .feeds import CappedFeed, ChangeStreamFeed

__all__ = ["MongoBackend"]

logger = logging.getLogger(__name__)

#: Server error codes that no retry changes: AuthenticationFailed, UserNotFound, Atlas's "bad
#: auth"; then Unauthorized (no user, or one without the privilege).
_AUTH_FAILED = frozenset({18, 11, 8000})
_UNAUTHORIZED = 13


class MongoBackend(Backend):
    """Backend for ``mongodb://[user:password@]host[:port][,...]/[database][?options]`` and
    ``mongodb+srv://``.

    Options: ``database`` (default: the URL's, else ``"leaderfeed"``), ``collection``
    (``"leaderfeed"``), ``notify`` (``"auto"``, ``"changestream"`` or ``"capped"``), and for
    capped mode ``capped_collection`` (``"<collection>_events"``), ``collection_size_bytes``
    (100000) and ``collection_max_docs`` (20). Once-only marks go to ``<collection>_marks``.
    """

    schemes = ("mongodb", "mongodb+srv")
    connection_errors = (PyMongoError,)
    option_names = frozenset(
        {"database", "collection", "notify", "capped_collection"}
        | {"collection_size_bytes", "collection_max_docs"}
    )

    def _configure(self) -> None:
        opts = self.options
        self.database_name = name_option(opts, "database", self._url_database() or "leaderfeed")
        self.collection_name = name_option(opts, "collection", "leaderfeed")
        self.capped_name = name_option(opts, "capped_collection", f"{self.collection_name}_events")
        self.notify: str = opts.get("notify", "auto")
        if self.notify not in NOTIFY_MODES:
            raise ConfigurationError(
                f"option 'notify' must be one of {NOTIFY_MODES}, got {self.notify!r}"
            )
        self.size_bytes = count_option(opts, "collection_size_bytes", 100_000)
        self.max_docs = count_option(opts, "collection_max_docs", 20)
        #: "changestream" or "capped", decided at connect.
        self.mode: str | None = None
        self._capped_ready = False  # capped mode: announce only once the capped collection exists
        self._client: MongoClient[Doc] | None = None
        self._records: Collection[Doc] | None = None
        self._events: Collection[Doc] | None = None
        self._marks: Collection[Doc] | None = None

    def _refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        del operation
        user = urlsplit(self.url).username
        if isinstance(exc, OperationFailure) and exc.code in _AUTH_FAILED:
            return Refusal(
                f"the store refused the credentials of user {user!r}",
                "check the user, password and authSource in the backend URL (leaderfeed_backend)",
            )
        if isinstance(exc, OperationFailure) and exc.code == _UNAUTHORIZED:
            who = "without a user" if user is None else f"for user {user!r}"
            return Refusal(
                f"the store does not allow what leaderfeed needs {who}",
                f"give a user with readWrite on database {self.database_name!r} in the backend "
                f"URL (mongodb://USER:PASSWORD@host/?authSource=...)",
            )
        if isinstance(exc, pymongo.errors.ConfigurationError):
            return Refusal(
                "the MongoDB driver rejects the connection settings",
                "fix the backend URL's options (leaderfeed_backend)",
            )
        if isinstance(exc, ServerSelectionTimeoutError) and "SSL handshake failed" in str(exc):
            return Refusal(
                "TLS with the store failed (a TLS client to a plain server, or a certificate "
                "not trusted?)",
                "set tls=true only for a TLS server, and tlsCAFile for its CA, in the backend URL",
            )
        return None

    def _url_database(self) -> str | None:
        if url_scheme(self.url) == "mongodb":  # parsing mongodb+srv:// would need DNS
            try:
                database = parse_uri(self.url)["database"]
            except (PyMongoError, ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"invalid MongoDB URL {self.display_url!r}: {url_error(self.url, exc)}"
                ) from None
            return database if isinstance(database, str) else None
        # Without the user-info: a password with an unencoded '/' must not become the name.
        return unquote(urlsplit(without_userinfo(self.url)).path.lstrip("/")) or None

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
            try:
                self._client = MongoClient(
                    self.url,
                    serverSelectionTimeoutMS=millis,
                    connectTimeoutMS=millis,
                    appname=f"leaderfeed:{self.name}",
                )
            except (ValueError, TypeError) as exc:  # mongodb+srv:// is parsed only here
                raise ConfigurationError(
                    f"invalid MongoDB URL {self.display_url!r}: {url_error(self.url, exc)}"
                ) from None
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
        self._marks = database[f"{self.collection_name}_marks"]

    def _create(self) -> None:
        records, events = self._collections()
        with self._deadline():
            self._ensure_collection(records)
            marks = self._marks_collection()
            self._ensure_collection(marks)
            # Idempotent: members that race create the same index.
            marks.create_index("expires_at", expireAfterSeconds=0, name=MARK_TTL_INDEX)
            if self.mode == "capped":
                self.ensure_capped(events)

    def ensure_capped(self, events: Collection[Doc]) -> None:
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
            if exc.code != NAMESPACE_EXISTS:
                raise
        found = next(iter(database.list_collections(filter={"name": collection.name})), None)
        existing = (found or {}).get("options", {})
        if options.get("capped") and not existing.get("capped"):  # an announcement got in first
            raise BackendUnavailable(
                f"{collection.full_name!r} was re-created before it was capped"
            )

    def _close(self) -> None:
        client, self._client = self._client, None
        self._records = self._events = self._marks = None
        if client is not None:
            client.close()

    # -- the record ----------------------------------------------------------------------------

    def _read(self) -> Observation:
        """The record and the server's clock in one round trip ($facet yields one result
        even when the document is missing)."""
        records, _ = self._collections()
        pipeline: list[Doc] = [{"$match": {"_id": self.name}}, {"$project": {"schedule": 0}}]
        pipeline += [{"$facet": {"doc": [{"$limit": 1}]}}, {"$set": {"now": NOW}}]
        with self._deadline():
            rows = list(records.aggregate(pipeline))
        if not rows:
            return observation_of(None)
        return observation_of((rows[0]["doc"] or [None])[0], float(rows[0]["now"]))

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
            record = observation_of(doc).record
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
        held = [{"$eq": ["$term", term]}, {"$eq": ["$token", literal(token)]}]
        return {"$expr": {"$and": [VALID_RECORD, *held]}}

    @staticmethod
    def _at_version(version: int) -> Doc:
        return {"$expr": {"$and": [VALID_RECORD, {"$eq": ["$version", version]}]}}

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        update = self._claimed(holder, token, min_term, min_version)
        if expected_version == MISSING_VERSION:
            # Matches nothing, so the upsert inserts {_id: NAME}, or hits the duplicate key
            # when any document - ours or foreign - is already there.
            return self._cas({"$expr": literal(False)}, update, upsert=True)
        if expected_version == CORRUPT_VERSION:
            # Replace the document only while it is still foreign: a claim that got in first
            # made it a valid record. Nothing of the foreign document is kept.
            replace = [{"$replaceWith": {"_id": "$_id"}}, *update]
            return self._cas({"$expr": {"$not": [VALID_RECORD]}}, replace)
        return self._cas(self._at_version(expected_version), update)

    @staticmethod
    def _claimed(holder: str, token: str, min_term: int, min_version: int) -> list[Doc]:
        """transitions.claimed: the stored term/version + 1, never more than CLOCK_LAG_MS below
        the store clock in milliseconds, or for a new record that clock, computed from
        renewed_at exactly as fresh_term() would."""
        fresh = {"$toLong": {"$multiply": ["$renewed_at", 1000]}}  # $toLong truncates
        lagged = {"$subtract": [fresh, CLOCK_LAG_MS]}

        def raised(field: str, floor: int) -> Doc:  # $add of a missing field gives null
            stored = {"$ifNull": [{"$toLong": {"$add": [field, 1]}}, fresh]}
            return {"$max": [stored, lagged, floor]}

        claim: Doc = {"term": raised("$term", min_term), "version": raised("$version", min_version)}
        claim.update(format=RECORD_FORMAT, holder=literal(holder), token=literal(token))
        claim["nominee"] = None
        return [*set_fields(renewed_at=NOW), {"$set": claim}]

    def _renew(self, term: int, token: str) -> WriteResult:
        nominee = {"$cond": [{"$eq": ["$nominee", "$holder"]}, None, "$nominee"]}
        update = set_fields(version=NEXT_VERSION, nominee=nominee, renewed_at=NOW)
        return self._cas(self._holding(term, token), update)

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        update = set_fields(
            holder=None, token=None, nominee=literal(nominee), version=NEXT_VERSION, renewed_at=NOW
        )
        return self._cas(self._holding(term, token), update)

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        update = set_fields(nominee=literal(nominee), version=NEXT_VERSION, renewed_at=NOW)
        return self._cas(self._at_version(expected_version), update)

    # -- schedule state ------------------------------------------------------------------------

    def _read_entries(self) -> dict[str, str]:
        records, _ = self._collections()
        with self._deadline():
            doc = records.find_one({"_id": self.name}, projection={"schedule": True})
        schedule = (doc or {}).get("schedule")
        if not isinstance(schedule, Mapping):
            return {}
        return {entry_name(k): v for k, v in schedule.items() if isinstance(v, str)}

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        records, _ = self._collections()
        field = f"schedule.{entry_key(entry)}"
        stored = {"$exists": False} if expected is None else {"$eq": expected}
        where = {"_id": self.name, **self._holding(term, token), field: stored}
        with self._deadline():
            return records.update_one(where, {"$set": {field: new}}).matched_count == 1

    # -- once-only marks -------------------------------------------------------------------------

    def _marks_collection(self) -> Collection[Doc]:
        if self._marks is None:
            raise BackendUnavailable(f"{self!r} is not connected")
        return self._marks

    def _mark_once(self, key: str, value: str, ttl: float) -> str | None:
        marks = self._marks_collection()
        mark_id = f"{self.name}/{key}"
        # Dates compared as milliseconds ($toLong): SecantusDB compares dates with $$NOW
        # wrongly, and this is MongoDB's documented conversion. A missing or foreign
        # expires_at gives null, which sorts below every number: such a mark counts as absent.
        expired = {"$expr": {"$lte": [{"$toLong": "$expires_at"}, NOW_MS]}}
        held = {"$expr": {"$gt": [{"$toLong": "$expires_at"}, NOW_MS]}}
        expires_at = {"$toDate": {"$add": [NOW_MS, max(1, math.ceil(ttl * 1000))]}}
        update = set_fields(value=literal(value), expires_at=expires_at)
        with self._deadline():
            while True:  # bounded by the deadline
                try:
                    # Replaces an expired mark, or (matching nothing) inserts a new one - or
                    # hits the duplicate key of a mark that is still held.
                    marks.find_one_and_update(
                        {"_id": mark_id, **expired}, update, upsert=True, projection={"_id": 1}
                    )
                except DuplicateKeyError:
                    pass
                else:
                    return None
                found = marks.find_one({"_id": mark_id, **held}, projection={"value": 1})
                if found is not None:
                    stored = found.get("value")
                    return stored if isinstance(stored, str) else str(stored)
                # It expired (or the TTL monitor deleted it) since: mark again.

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        records, events = self._collections()
        with self._deadline():
            if self.mode == "changestream":
                return ChangeStreamFeed(self, records)
            return CappedFeed(self, events)
