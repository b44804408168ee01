"""RethinkDB backend (``rethinkdb://``): one document per election, changed by ``r.branch``.

The record of election ``NAME`` is the document ``{id: NAME, format, holder, token, term,
version, nominee, renewed_at, schedule}`` in table ``table`` (option, default ``leaderfeed``,
primary key ``id``) of the URL's database (default ``leaderfeed``). ``create()`` makes both if
missing ("already exists" from a racing member is fine) and, once called, they are made again
when the server has lost them (restarted empty). In a cluster of several servers concurrent
creation can make two tables of one name: create them beforehand there.

Each write is one query: it binds ``r.now()``, runs ``get(NAME).replace(lambda doc:
r.branch(compare, new_doc, doc))`` with the compare-and-set of :mod:`.transitions`, and reads
the document back so a refusal reports what refused it. The server decides "is this a record"
by :func:`~celery_leaderfeed.record.decode_record`'s rules (format, field types), so foreign
data is never taken for one; replies are decoded by ``decode_record`` itself. Time is the
server's: ``renewed_at`` is ``r.now()`` in epoch seconds, a fresh term or version its floor in
milliseconds. Schedule entries live in the record (keys prefixed ``entry:``, so no name can be
ReQL's reserved ``$reql_type$``): one conditional replace fences an entry on term and token.

A subscription opens two connections of its own: a point changefeed on the record with
``include_initial`` (its first value is awaited, so the feed is live before the engine reads,
but not passed on: that read supersedes it) and a table changefeed whose changes to documents
other than leader records become ``change`` events. A thread per feed blocks on its cursor and
queues what arrives; ``poll`` waits on the queue, and ``close`` shuts the sockets down, which
ends the threads.

Timeouts: the driver's ``run()`` has none and puts its socket back in blocking mode
(``settimeout(None)``) before every read, so a socket timeout bounds nothing. Sockets get kernel
timeouts instead (``SO_RCVTIMEO``/``SO_SNDTIMEO``, which ``settimeout`` leaves alone), set before
each query to what is left of the call's ``timeout``: a server that stops answering fails the
read with the driver's ``ReqlTimeoutError``. Connecting is bounded by the driver's ``timeout``.
A connection that failed is dropped and the next call connects again. Not fork-safe:
connections are made in ``connect()`` (or lazily), never in ``__init__``.
"""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from rethinkdb import r
from rethinkdb.errors import (
    ReqlCompileError,
    ReqlError,
    ReqlOpFailedError,
    ReqlRuntimeError,
    ReqlTimeoutError,
)

from ..errors import BackendUnavailable, ConfigurationError
from ..record import RECORD_FORMAT, Observation, WriteResult, decode_record
from ..urls import redact_urls_in
from .base import Backend, DataChanged, FeedEvent, RecordChanged, Subscription

__all__ = ["RethinkBackend"]

T = TypeVar("T")
Term = Any  # a ReQL term: the driver is untyped

DEFAULT_PORT = 28015
DEFAULT_DB = "leaderfeed"
DEFAULT_TABLE = "leaderfeed"
ENTRY_PREFIX = "entry:"
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # RethinkDB's database and table names: A-Z a-z 0-9 _ -
_REFUSED = "leaderfeed: fenced write refused"
_MISSING = "does not exist"  # ReqlOpFailedError for a database or table the server lacks
_FIELDS = ("holder", "token", "term", "version", "nominee", "renewed_at", "schedule")


# -- ReQL building blocks --------------------------------------------------------------------


def _field(doc: Term, name: str) -> Term:
    return doc[name].default(None)  # a missing field reads as null, as in decode_record


def _is_record(doc: Term) -> Term:
    """True when ``doc`` (an object or null) passes decode_record."""

    def count(name: str) -> Term:  # r.branch is lazy: floor() only ever sees a number
        value = _field(doc, name)
        return r.branch(
            value.type_of().eq("NUMBER"), value.ge(1).and_(value.floor().eq(value)), False
        )

    def of_type(name: str, *types: str) -> Term:
        return r.expr(list(types)).contains(_field(doc, name).type_of())

    return r.branch(
        doc.type_of().ne("OBJECT"),
        False,
        _field(doc, "format").ne(RECORD_FORMAT),
        False,
        r.and_(
            count("term"),
            count("version"),
            of_type("holder", "STRING", "NULL"),
            of_type("token", "STRING", "NULL"),
            of_type("nominee", "STRING", "NULL"),
            _field(doc, "holder").eq(None).eq(_field(doc, "token").eq(None)),
            of_type("renewed_at", "NUMBER", "NULL"),
        ),
    )


def _version(doc: Term, valid: Term) -> Term:
    """The version as Observation.version counts it: 0 missing, -1 foreign."""
    return r.branch(doc.eq(None), 0, valid, doc["version"], -1)


def _holds(doc: Term, valid: Term, term: int, token: str) -> Term:
    return r.branch(valid, doc["term"].eq(term).and_(doc["token"].eq(token)), False)


def _entries(doc: Term) -> Term:
    return r.branch(_field(doc, "schedule").type_of().eq("OBJECT"), doc["schedule"], {})


def _at_least(value: Term, floor: int) -> Term:
    return value.do(lambda v: r.branch(v.gt(floor), v, floor))


def _observation(doc: object, store_time: float | None) -> Observation:
    if doc is None:
        return Observation(None, store_time=store_time)
    if isinstance(doc, dict):
        fields = {key: value for key, value in doc.items() if key not in ("id", "schedule")}
        try:
            return Observation(decode_record(fields), store_time=store_time)
        except ValueError:
            pass
    return Observation(None, corrupt=True, store_time=store_time)


def _parse_url(url: str, shown: str) -> tuple[str, int, str, str, str]:
    """host, port, user, password, database of a ``rethinkdb://`` URL (``shown``: redacted)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(f"invalid RethinkDB URL {shown!r}: {exc}") from None
    if parts.query or parts.fragment:
        raise ConfigurationError(f"a RethinkDB URL takes no query string or fragment: {shown!r}")
    db = unquote(parts.path.strip("/")) or DEFAULT_DB
    if not _NAME.fullmatch(db):
        raise ConfigurationError(f"the database in {shown!r} must be a RethinkDB name: {db!r}")
    user = unquote(parts.username) if parts.username else "admin"
    password = unquote(parts.password) if parts.password else ""
    return parts.hostname or "localhost", port, user, password, db


# -- sockets -----------------------------------------------------------------------------------


def _socket_of(conn: Any) -> socket.socket:
    # The driver offers no handle on its socket (2.4.x: Connection._instance._socket._socket);
    # this is the one place that reaches for it, and it fails loudly if the layout changes.
    sock = getattr(getattr(getattr(conn, "_instance", None), "_socket", None), "_socket", None)
    if not isinstance(sock, socket.socket):
        raise ConfigurationError(
            "cannot find the rethinkdb driver's socket to bound calls by the timeout "
            "(this backend is tested with rethinkdb 2.4.10)"
        )
    return sock


def _bound(sock: socket.socket, seconds: float) -> None:
    """Kernel timeouts for each blocking read and write on ``sock`` (0: none)."""
    whole = int(seconds)
    micros = max(int((seconds - whole) * 1e6), 1 if seconds > 0 and not whole else 0)
    value = struct.pack("ll", whole, micros)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _describe(exc: BaseException) -> str:
    # Not str(exc): for a ReqlError that prints the whole query.
    return f"{type(exc).__name__}: {exc.message if isinstance(exc, ReqlError) else exc}"


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # it may be broken already; nothing to report
        conn.close(noreply_wait=False)


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
        if not isinstance(table, str) or not _NAME.fullmatch(table):
            raise ConfigurationError(f"option 'table' must be a RethinkDB name, got {table!r}")
        self.table_name = table
        self.host, self.port, self.user, self._password, self.db = _parse_url(
            self.url, self.display_url
        )
        self._lock = threading.RLock()  # the driver's connections are not thread-safe
        self._conn: Any = None
        self._closed = False
        self._may_create = False  # set by create(): re-make what the server lost

    def _table(self) -> Term:
        return r.db(self.db).table(self.table_name)

    def _record(self) -> Term:
        return self._table().get(self.name)

    # -- connections and calls -----------------------------------------------------------------

    def _left(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendUnavailable(f"{self.display_url}: no answer within {self.timeout:g} s")
        return left

    def _open(self, deadline: float) -> Any:
        """A new connection, its handshake bounded by the time left."""
        if self._closed:
            raise BackendUnavailable(f"{self!r} is closed")
        return r.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self._password,
            timeout=self._left(deadline),
        )

    def _execute(self, query: Term, deadline: float) -> Any:
        """Run ``query`` on the shared connection; call with ``_lock`` held."""
        if self._conn is None or not self._conn.is_open():
            self._drop()
            self._conn = self._open(deadline)
        try:
            _bound(_socket_of(self._conn), self._left(deadline))
            return query.run(self._conn)
        except (ReqlRuntimeError, ReqlCompileError):
            raise  # the server answered: the connection is fine
        except BaseException:
            self._drop()  # timed out or broken: a late reply must never meet the next query
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(conn)

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except ReqlError as exc:
            timed_out = isinstance(exc, ReqlTimeoutError)
            detail = f"no answer within {self.timeout:g} s" if timed_out else _describe(exc)
            raise BackendUnavailable(redact_urls_in(f"{self.display_url}: {detail}")) from exc

    def _with_tables(self, attempt: Callable[[], T], deadline: float) -> T:
        """``attempt()``; if the server lost our database or table since create() (it restarted
        empty), make them again and attempt once more."""
        try:
            return attempt()
        except ReqlOpFailedError as exc:
            if not (self._may_create and _MISSING in exc.message):
                raise
        self._make_tables(deadline)
        return attempt()

    def _run(self, query: Term) -> Any:
        with self._mapped(), self._lock:
            deadline = time.monotonic() + self.timeout
            return self._with_tables(lambda: self._execute(query, deadline), deadline)

    def _make_tables(self, deadline: float) -> None:
        db, table = r.db(self.db), self.table_name
        with self._lock:
            for query in (
                r.branch(r.db_list().contains(self.db), None, r.db_create(self.db)),
                r.branch(db.table_list().contains(table), None, db.table_create(table)),
            ):
                try:  # checked first, so existing ones need no permission to create
                    self._execute(query, deadline)
                except ReqlOpFailedError as exc:
                    if "already exists" not in exc.message:  # else another member was first
                        raise
            # Not the default "all_replicas_ready": a cluster with a replica down still works.
            self._execute(self._table().wait(wait_for="ready_for_writes"), deadline)

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> None:
        with self._mapped(), self._lock:
            self._closed = False
            self._drop()
            self._conn = self._open(time.monotonic() + self.timeout)

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
        reply = self._run(r.expr({"doc": self._record(), "now": r.now().to_epoch_time()}))
        return _observation(reply["doc"], reply["now"])

    def _new(self, *values: Term) -> dict[str, Term]:
        """The record document from the values of ``_FIELDS``, in that order."""
        return {"id": self.name, "format": RECORD_FORMAT, **dict(zip(_FIELDS, values, strict=True))}

    def _write(self, change: Callable[[Term, Term, Term], Term]) -> WriteResult:
        """One atomic replace: ``change(doc, valid, now)`` returns the new document, or ``doc``
        itself to refuse; the same query reads the document back for a refusal."""
        record = self._record()
        query = (
            r.now()
            .to_epoch_time()
            .do(
                lambda now: record.replace(
                    lambda doc: _is_record(doc).do(lambda valid: change(doc, valid, now)),
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
            return WriteResult(True, _observation(changes[0]["new_val"], reply["now"]))
        return WriteResult(False, _observation(reply["doc"], reply["now"]))

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            fresh = now.mul(1000).floor()  # over a missing or foreign record: the clock in ms
            term = _at_least(r.branch(valid, doc["term"].add(1), fresh), min_term)
            version = _at_least(r.branch(valid, doc["version"].add(1), fresh), min_version)
            entries = r.branch(valid, _entries(doc), {})
            new = self._new(holder, token, term, version, None, now, entries)
            return r.branch(_version(doc, valid).eq(expected_version), new, doc)

        return self._write(change)

    def _renew(self, term: int, token: str) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            holder, nominee = _field(doc, "holder"), _field(doc, "nominee")
            nominee = r.branch(nominee.eq(holder), None, nominee)
            version = doc["version"].add(1)
            new = self._new(holder, token, term, version, nominee, now, _entries(doc))
            return r.branch(_holds(doc, valid, term, token), new, doc)

        return self._write(change)

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            version = doc["version"].add(1)
            new = self._new(None, None, term, version, nominee, now, _entries(doc))
            return r.branch(_holds(doc, valid, term, token), new, doc)

        return self._write(change)

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        def change(doc: Term, valid: Term, now: Term) -> Term:
            holder, token, version = _field(doc, "holder"), _field(doc, "token"), doc["version"]
            new = self._new(holder, token, doc["term"], version.add(1), nominee, now, _entries(doc))
            return r.branch(r.branch(valid, version.eq(expected_version), False), new, doc)

        return self._write(change)

    # -- schedule state ------------------------------------------------------------------------

    def _read_entries(self) -> dict[str, str]:
        stored = self._run(self._record()["schedule"].default({}))
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
                _holds(doc, valid, term, token),
                _entries(doc)[key].default(None).eq(expected),
                False,
            )
            # r.error, not doc: "unchanged" would not tell a refusal from rewriting the same value.
            return r.branch(still, doc.merge({"schedule": {key: new}}), r.error(_REFUSED))

        result = self._run(
            self._record().replace(lambda doc: _is_record(doc).do(lambda ok: change(doc, ok)))
        )
        if not result.get("errors"):
            return True
        if _REFUSED in str(result.get("first_error")):
            return False
        raise BackendUnavailable(f"{self.display_url} refused the write: {result['first_error']}")

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        deadline = time.monotonic() + self.timeout
        with self._mapped():
            return self._with_tables(lambda: _RethinkSubscription(self, deadline), deadline)

    def _data_event(self, change: dict[str, Any]) -> FeedEvent | None:
        docs = [doc for doc in (change.get("old_val"), change.get("new_val")) if doc is not None]
        if any(doc.get("id") == self.name or doc.get("format") == RECORD_FORMAT for doc in docs):
            return None  # a leader record (ours comes through the point feed)
        return DataChanged(change) if docs else None


class _Broken:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _record_event(change: dict[str, Any]) -> FeedEvent | None:
    return RecordChanged(_observation(change["new_val"], None)) if "new_val" in change else None


class _RethinkSubscription(Subscription):
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
                backend._record().changes(include_initial=True, squash=False),
                _record_event,
                deadline,
            )
            # The initial value proves the feed is registered before the engine's read. It is
            # not passed on: that read supersedes it, and a stale "missing" (no version to
            # order it by) arriving after the engine's first claim would unseat the claimer.
            point.next(wait=backend._left(deadline))
            self._open(backend._table().changes(squash=False), backend._data_event, deadline)
        except BaseException:
            self.close()
            raise
        self._reading = True
        for feed in self._feeds:
            name = f"leaderfeed-rethinkdb[{backend.name}]"
            threading.Thread(target=self._read, args=feed, name=name, daemon=True).start()

    def _open(self, query: Term, convert: Callable[..., FeedEvent | None], deadline: float) -> Any:
        """Run the changefeed ``query`` on a connection of its own; return the cursor."""
        connection = self._backend._open(deadline)
        try:
            sock = _socket_of(connection)
            _bound(sock, self._backend._left(deadline))
            cursor = query.run(connection)
        except BaseException:
            _close_quietly(connection)
            raise
        self._feeds.append((connection, sock, cursor, convert))
        return cursor

    def _read(self, connection: Any, sock: socket.socket, cursor: Any, convert: Any) -> None:
        try:
            _bound(sock, 0)  # from now on only close() ends the wait
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
            _close_quietly(connection)

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
        detail = f"the changefeed on {self._backend.display_url} broke: {_describe(error)}"
        raise BackendUnavailable(redact_urls_in(detail)) from error

    def close(self) -> None:
        self._closed = True
        self._queue.put(_Broken(BackendUnavailable("the change feed is closed")))  # wakes poll
        for connection, sock, _, _ in self._feeds:
            if not self._reading:  # no thread owns the connection yet
                _close_quietly(connection)
            with contextlib.suppress(OSError):  # already closed
                # Wakes the thread, which closes the connection. Not SHUT_RDWR: the server
                # would hang up first and the driver's own close would log ENOTCONN.
                sock.shutdown(socket.SHUT_RD)
