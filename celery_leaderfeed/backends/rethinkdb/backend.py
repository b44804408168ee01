"""``RethinkBackend``: the record as one document, changed by a conditional ``replace``.

Once-only marks live in the table ``<table>_marks``, one document per mark: ``id`` a SHA-256
of ``NAME/KEY`` (a primary key holds at most 127 characters; election names have no ``/``),
``value`` and ``expires_at`` (epoch seconds from ``r.now()``). One ``insert`` whose conflict
function keeps a mark that has not expired and replaces one that has. RethinkDB has no TTL:
expired marks stay until replaced, and each member deletes expired ones (any election's, at
most :data:`MARK_SWEEP_LIMIT` at a time) at most once every :data:`MARK_SWEEP_INTERVAL`
seconds, after a mark.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rethinkdb import r
from rethinkdb.errors import (
    ReqlAuthError,
    ReqlCompileError,
    ReqlError,
    ReqlOpFailedError,
    ReqlPermissionError,
    ReqlRuntimeError,
    ReqlTimeoutError,
)

from ...errors import BackendUnavailable, ConfigurationError
from ...record import RECORD_FORMAT, Observation, WriteResult
from ..base import Backend, DataChanged, FeedEvent, Refusal, Subscription
from ..transitions import CLOCK_LAG_MS
from .connection import (
    DEFAULT_TABLE,
    NAME_PATTERN,
    bound,
    close_quietly,
    describe,
    parse_url,
    socket_of,
)
from .feeds import RethinkSubscription
from .queries import (
    ENTRY_PREFIX,
    FIELDS,
    REFUSED,
    Term,
    at_least,
    entries_of,
    field,
    holds,
    is_record,
    mark_held,
    observation_of,
    version_of,
)

__all__ = ["RethinkBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds between two sweeps of expired marks by one member, and the most one sweep deletes.
MARK_SWEEP_INTERVAL = 60.0
MARK_SWEEP_LIMIT = 1000
#: ReqlOpFailedError's words for a database or table the server lacks.
MISSING = "does not exist"


class RethinkBackend(Backend):
    """Backend for ``rethinkdb://[user[:password]@]host[:port][/db]``.

    ``user`` defaults to ``admin``, the password to none, the port to 28015 and the database
    to ``leaderfeed``. Options: ``table`` (default ``"leaderfeed"``).
    """

    schemes = ("rethinkdb",)
    # Every driver error (ReqlTimeoutError is also an OSError) means the store cannot serve us.
    connection_errors = (ReqlError, OSError)
    option_names = frozenset({"table"})

    def _configure(self) -> None:
        table = self.options.get("table", DEFAULT_TABLE)
        if not isinstance(table, str) or not NAME_PATTERN.fullmatch(table):
            raise ConfigurationError(f"option 'table' must be a RethinkDB name, got {table!r}")
        self.table_name = table
        self.host, self.port, self.user, self._password, self.db = parse_url(
            self.url, self.display_url
        )
        self._lock = threading.RLock()  # the driver's connections are not thread-safe
        self._conn: Any = None
        self._closed = False
        self._may_create = False  # set by create(): re-make what the server lost
        self._next_sweep = time.monotonic() + MARK_SWEEP_INTERVAL

    def table_query(self) -> Term:
        return r.db(self.db).table(self.table_name)

    def marks_query(self) -> Term:
        return r.db(self.db).table(f"{self.table_name}_marks")

    def record_query(self) -> Term:
        return self.table_query().get(self.name)

    # -- connections and calls -----------------------------------------------------------------

    def time_left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendUnavailable(f"{self.display_url}: no answer within {self.timeout:g} s")
        return left

    def open_connection(self, deadline: float) -> Any:
        """A new connection, its handshake bounded by the time left."""
        if self._closed:
            raise BackendUnavailable(f"{self!r} is closed")
        return r.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self._password,
            timeout=self.time_left(deadline),
        )

    def _execute(self, query: Term, deadline: float) -> Any:
        """Run ``query`` on the shared connection; call with ``_lock`` held."""
        if self._conn is None or not self._conn.is_open():
            self._drop()
            self._conn = self.open_connection(deadline)
        try:
            bound(socket_of(self._conn), self.time_left(deadline))
            return query.run(self._conn)
        except (ReqlRuntimeError, ReqlCompileError):
            raise  # the server answered: the connection is fine
        except BaseException:
            self._drop()  # timed out or broken: a late reply must never meet the next query
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            close_quietly(conn)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except ReqlError as exc:
            timed_out = isinstance(exc, ReqlTimeoutError)
            detail = f"no answer within {self.timeout:g} s" if timed_out else describe(exc)
            cause = self.shown_cause(exc)
            refusal = self._refusal(exc, "")
            if refusal is not None:
                raise self.refused(refusal, self.redact(detail)) from cause
            raise BackendUnavailable(self.redact(f"{self.display_url}: {detail}")) from cause

    def _refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        del operation
        if isinstance(exc, ReqlAuthError):
            unknown = "unknown user" in str(exc.message).lower()
            return Refusal(
                f"the store has no user {self.user!r}"
                if unknown
                else f"the store refused the password for user {self.user!r}",
                "check the user and password in the backend URL (leaderfeed_backend)",
            )
        if isinstance(exc, ReqlPermissionError):
            return Refusal(
                f"the store does not allow user {self.user!r} what leaderfeed needs",
                f"grant it read, write and config on database {self.db!r}",
            )
        return None

    def _with_tables(self, attempt: Callable[[], T], deadline: float) -> T:
        """``attempt()``; if the server lost our database or table since create() (it restarted
        empty), make them again and attempt once more."""
        try:
            return attempt()
        except ReqlOpFailedError as exc:
            if not (self._may_create and MISSING in exc.message):
                raise
        self._make_tables(deadline)
        return attempt()

    def _run(self, query: Term) -> Any:
        with self._mapped(), self._lock:
            deadline = time.monotonic() + self.timeout
            return self._with_tables(lambda: self._execute(query, deadline), deadline)

    def _make_tables(self, deadline: float) -> None:
        db, table, marks = r.db(self.db), self.table_name, f"{self.table_name}_marks"
        with self._lock:
            for query in (
                r.branch(r.db_list().contains(self.db), None, r.db_create(self.db)),
                r.branch(db.table_list().contains(table), None, db.table_create(table)),
                r.branch(db.table_list().contains(marks), None, db.table_create(marks)),
            ):
                try:  # checked first, so existing ones need no permission to create
                    self._execute(query, deadline)
                except ReqlOpFailedError as exc:
                    if "already exists" not in exc.message:  # else another member was first
                        raise
            # Not the default "all_replicas_ready": a cluster with a replica down still works.
            for made in (self.table_query(), self.marks_query()):
                self._execute(made.wait(wait_for="ready_for_writes"), deadline)

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> None:
        with self._mapped(), self._lock:
            self._closed = False
            self._drop()
            self._conn = self.open_connection(time.monotonic() + self.timeout)

    def _create(self) -> None:
        self._may_create = True
        with self._mapped():
            self._make_tables(time.monotonic() + self.timeout)

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    # -- the record ----------------------------------------------------------------------------

    def _read(self) -> Observation:
        reply = self._run(r.expr({"doc": self.record_query(), "now": r.now().to_epoch_time()}))
        return observation_of(reply["doc"], reply["now"])

    def _new(self, *values: Term) -> dict[str, Term]:
        """The record document from the values of ``FIELDS``, in that order."""
        return {"id": self.name, "format": RECORD_FORMAT, **dict(zip(FIELDS, values, strict=True))}

    def _write(self, change: Callable[[Term, Term, Term], Term]) -> WriteResult:
        """One atomic replace: ``change(doc, valid, now)`` returns the new document, or ``doc``
        itself to refuse; the same query reads the document back for a refusal."""
        record = self.record_query()
        query = (
            r.now()
            .to_epoch_time()
            .do(
                lambda now: record.replace(
                    lambda doc: is_record(doc).do(lambda valid: change(doc, valid, now)),
                    return_changes=True,
                ).do(lambda result: {"result": result, "doc": record, "now": now})
            )
        )
        reply = self._run(query)
        result = reply["result"]
        if result.get("errors"):
            raise BackendUnavailable(
                f"{self.display_url} refused the write: {result.get('first_error')}"
            )
        changes = result.get("changes") or []
        if result.get("replaced", 0) + result.get("inserted", 0) == 1 and changes:
            return WriteResult(True, observation_of(changes[0]["new_val"], reply["now"]))
        return WriteResult(False, observation_of(reply["doc"], reply["now"]))

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            fresh = now.mul(1000).floor()  # over a missing or foreign record: the clock in ms
            lagged = fresh.sub(CLOCK_LAG_MS)  # never further below it (transitions.claimed)

            def raised(field: str) -> Term:
                return doc[field].add(1).do(lambda v: r.branch(v.gt(lagged), v, lagged))

            term = at_least(r.branch(valid, raised("term"), fresh), min_term)
            version = at_least(r.branch(valid, raised("version"), fresh), min_version)
            entries = r.branch(valid, entries_of(doc), {})
            new = self._new(holder, token, term, version, None, now, entries)
            return r.branch(version_of(doc, valid).eq(expected_version), new, doc)

        return self._write(change)

    def _renew(self, term: int, token: str) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            holder, nominee = field(doc, "holder"), field(doc, "nominee")
            nominee = r.branch(nominee.eq(holder), None, nominee)
            version = doc["version"].add(1)
            new = self._new(holder, token, term, version, nominee, now, entries_of(doc))
            return r.branch(holds(doc, valid, term, token), new, doc)

        return self._write(change)

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            version = doc["version"].add(1)
            new = self._new(None, None, term, version, nominee, now, entries_of(doc))
            return r.branch(holds(doc, valid, term, token), new, doc)

        return self._write(change)

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            holder, token, version = field(doc, "holder"), field(doc, "token"), doc["version"]
            new = self._new(
                holder, token, doc["term"], version.add(1), nominee, now, entries_of(doc)
            )
            return r.branch(r.branch(valid, version.eq(expected_version), False), new, doc)

        return self._write(change)

    # -- schedule state ------------------------------------------------------------------------

    def _read_entries(self) -> dict[str, str]:
        stored = self._run(self.record_query()["schedule"].default({}))
        if not isinstance(stored, dict):
            return {}
        return {
            key[len(ENTRY_PREFIX) :]: value
            for key, value in stored.items()
            if key.startswith(ENTRY_PREFIX) and isinstance(value, str)
        }

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        key = ENTRY_PREFIX + entry

        def change(doc: Term, valid: Term) -> Term:
            still = r.branch(
                holds(doc, valid, term, token),
                entries_of(doc)[key].default(None).eq(expected),
                False,
            )
            # r.error, not doc: "unchanged" would not tell a refusal from rewriting the same value.
            return r.branch(still, doc.merge({"schedule": {key: new}}), r.error(REFUSED))

        result = self._run(
            self.record_query().replace(lambda doc: is_record(doc).do(lambda ok: change(doc, ok)))
        )
        if not result.get("errors"):
            return True
        if REFUSED in str(result.get("first_error")):
            return False
        raise BackendUnavailable(f"{self.display_url} refused the write: {result['first_error']}")

    # -- once-only marks -----------------------------------------------------------------------

    def _mark_once(self, key: str, value: str, ttl: float) -> str | None:
        mark_id = hashlib.sha256(f"{self.name}/{key}".encode()).hexdigest()
        now = r.now().to_epoch_time()  # one value for the whole query

        def keep_held(_id: Term, old: Term, new: Term) -> Term:
            return r.branch(mark_held(old, now), old, new)

        mark = {"id": mark_id, "value": value, "expires_at": now.add(ttl)}
        result = self._run(
            self.marks_query().insert(mark, conflict=keep_held, return_changes="always")
        )
        if result.get("errors"):
            raise BackendUnavailable(
                f"{self.display_url} refused the mark: {result.get('first_error')}"
            )
        self._sweep_marks()
        if result.get("inserted", 0) + result.get("replaced", 0) == 1:
            return None
        held = (result.get("changes") or [{}])[0].get("old_val") or {}
        stored = held.get("value")
        return stored if isinstance(stored, str) else str(stored)

    def _sweep_marks(self) -> None:
        """Delete expired marks, bounded, at most every MARK_SWEEP_INTERVAL seconds."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + MARK_SWEEP_INTERVAL
        now = r.now().to_epoch_time()
        expired = self.marks_query().filter(lambda doc: mark_held(doc, now).not_())
        try:
            self._run(expired.limit(MARK_SWEEP_LIMIT).delete())
        except BackendUnavailable as exc:  # the mark itself was made; the next sweep retries
            logger.debug("leaderfeed %r: sweeping expired marks failed: %s", self.name, exc)

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        deadline = time.monotonic() + self.timeout
        with self._mapped():
            return self._with_tables(lambda: RethinkSubscription(self, deadline), deadline)

    def data_event(self, change: dict[str, Any]) -> FeedEvent | None:
        docs = [doc for doc in (change.get("old_val"), change.get("new_val")) if doc is not None]
        if any(doc.get("id") == self.name or doc.get("format") == RECORD_FORMAT for doc in docs):
            return None  # a leader record (ours comes through the point feed)
        return DataChanged(change) if docs else None
