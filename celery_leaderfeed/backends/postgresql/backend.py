"""``PostgresBackend``: the record as one row, changed by one ``WITH ... UPDATE`` statement."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ...errors import BackendUnavailable, ConfigurationError
from ...record import LeaderRecord, Observation, WriteResult
from ...urls import MISREAD_USERINFO, misread_userinfo, url_error
from ..base import Backend, HolderWatch, Refusal, Subscription
from .connection import (
    CREATE_LOCK,
    DB_SCHEMES,
    DEFAULT_SCHEMA,
    DEFAULT_TABLE,
    SCHEMES,
    connect,
    flag_option,
    identifier_option,
    libpq_url,
    refusal_of,
)
from .feed import ListenSubscription
from .holder_lock import HolderLock
from .statements import Statements

__all__ = ["PostgresBackend"]

logger = logging.getLogger(__name__)

#: Seconds between two sweeps of expired marks by one member, and the most one sweep deletes.
MARK_SWEEP_INTERVAL = 60.0
MARK_SWEEP_LIMIT = 1000


class PostgresBackend(Backend):
    """Backend for ``postgresql://[user[:password]@][host][:port][/database][?param=value]``,
    ``postgres://`` and Celery's ``db+postgresql://`` (any libpq URL parameter works, e.g.
    ``sslmode``, ``host=/run/postgresql`` for a socket).

    Options: ``schema`` (default ``"public"``; created if missing) and ``table`` (default
    ``"leaderfeed"``); schedule state goes to ``<table>_schedule`` and once-only marks to
    ``<table>_marks`` in the same schema. ``fast_failover`` (default False): the leader also
    holds an advisory lock that followers wait for, so a crashed leader's successor claims
    within milliseconds (:mod:`~celery_leaderfeed.backends.postgresql.holder_lock`); one more
    connection per member.
    """

    schemes = (*SCHEMES, *DB_SCHEMES)
    connection_errors = (psycopg.Error, OSError)
    option_names = frozenset({"schema", "table", "fast_failover"})

    def _configure(self) -> None:
        self.schema = identifier_option(self.options, "schema", DEFAULT_SCHEMA)
        self.table = identifier_option(self.options, "table", DEFAULT_TABLE)
        self.fast_failover = flag_option(self.options, "fast_failover")
        if misread_userinfo(self.url):
            raise ConfigurationError(
                f"invalid PostgreSQL URL {self.display_url!r}: {MISREAD_USERINFO}"
            )
        self.conninfo = libpq_url(self.url)
        try:
            params = conninfo_to_dict(self.conninfo)
        except psycopg.Error as exc:
            raise ConfigurationError(
                f"invalid PostgreSQL URL {self.display_url!r}: {url_error(self.url, exc)}"
            ) from None
        port = str(params.get("port") or "")
        if port and not all(part.isdigit() for part in port.split(",") if part):
            # libpq checks this only when it connects, and that error would be retried forever.
            problem = url_error(self.url, ValueError("the port must be a number"))
            raise ConfigurationError(f"invalid PostgreSQL URL {self.display_url!r}: {problem}")
        self.database = str(params.get("dbname") or params.get("user") or "")
        self.statements = Statements(self.schema, self.table)
        digest = hashlib.sha256(f"{self.schema}.{self.table}/{self.name}".encode()).hexdigest()
        #: LISTEN/NOTIFY channel of this election (names are at most 63 bytes).
        self.channel = f"leaderfeed_{digest[:40]}"
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._may_create = False
        self._warned_foreign = False
        self._next_sweep = time.monotonic() + MARK_SWEEP_INTERVAL

    # -- connections -----------------------------------------------------------------------------

    def open_connection(self) -> psycopg.Connection[Any]:
        """A new connection, every call on it bounded by the backend's timeout."""
        if self._closed:
            raise BackendUnavailable(f"{self!r} is closed")
        return connect(self.conninfo, name=self.name, timeout=self.timeout)

    def _connection(self) -> psycopg.Connection[Any]:
        """The shared connection, opened again if it broke; call with ``_lock`` held."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._drop()
            conn = self._conn = self.open_connection()
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("error closing a PostgreSQL connection", exc_info=True)

    def _execute(
        self, statement: sql.Composed, params: Mapping[str, Any] | None = None, *, rows: bool = True
    ) -> list[tuple[Any, ...]]:
        """Run one statement on the shared connection; re-make lost tables once."""
        with self._lock:
            conn = self._connection()
            try:
                try:
                    cursor = conn.execute(statement, params)
                except pg_errors.UndefinedTable:
                    if not self._may_create:
                        raise
                    # Dropped (or restored without it) since create(): make it again, once.
                    self._make_tables(conn)
                    cursor = conn.execute(statement, params)
                return cursor.fetchall() if rows else []
            except psycopg.OperationalError:
                self._drop()  # a late reply must never meet the next statement
                raise

    # -- errors retrying cannot fix ------------------------------------------------------------

    def _refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        del operation
        user = conninfo_to_dict(self.conninfo).get("user") or "(the OS user)"
        names = self.statements
        return refusal_of(
            exc,
            user=str(user),
            database=self.database,
            schema=self.schema,
            tables=(names.records_name, names.schedule_name, names.marks_name),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> None:
        with self._lock:
            self._closed = False
            self._drop()
            self._conn = self.open_connection()

    def _create(self) -> None:
        self._may_create = True
        with self._lock:
            self._make_tables(self._connection())

    def _make_tables(self, conn: psycopg.Connection[Any]) -> None:
        """Create what is missing (serialised by an advisory lock, so racing members never
        meet a duplicate-key error) and check that existing tables have our layout."""
        names = self.statements
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [CREATE_LOCK])
            found = conn.execute(
                "SELECT to_regnamespace(%s), to_regclass(%s), to_regclass(%s), to_regclass(%s)",
                [
                    names.schema.as_string(conn),
                    names.records.as_string(conn),
                    names.schedule.as_string(conn),
                    names.marks.as_string(conn),
                ],
            ).fetchone()
            assert found is not None
            has_schema, has_records, has_schedule, has_marks = found
            # Only what is missing: creating (even IF NOT EXISTS) needs the CREATE privilege.
            if has_schema is None:
                conn.execute(names.create_schema)
            if has_records is None:
                conn.execute(names.create_records)
            if has_schedule is None:
                conn.execute(names.create_schedule)
            if has_marks is None:
                conn.execute(names.create_marks)
                conn.execute(names.index_marks)
        for probe, table in (
            (names.check_records, names.records_name),
            (names.check_schedule, names.schedule_name),
            (names.check_marks, names.marks_name),
        ):
            try:
                conn.execute(probe)
            except pg_errors.UndefinedColumn as exc:
                raise ConfigurationError(
                    f"table {table} on {self.display_url} exists with another layout than "
                    f"leaderfeed's ({self.redact(str(exc)).splitlines()[0]}): drop it or name "
                    f"another table with the 'table' option"
                ) from None

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    # -- the record ----------------------------------------------------------------------------

    def _params(self, **values: Any) -> dict[str, Any]:
        return {"name": self.name, "channel": self.channel, **values}

    def _reply(self, statement: sql.Composed, **values: Any) -> WriteResult:
        rows = self._execute(statement, self._params(**values))
        (
            present, valid, suspect, holder, token, term, version, nominee, renewed_at, ms,
            ok, w_holder, w_token, w_term, w_version, w_nominee, w_renewed_at, _sent,
        ) = rows[0]  # fmt: skip
        store_time = ms / 1000
        if ok:
            record = LeaderRecord(w_holder, w_token, w_term, w_version, w_nominee, w_renewed_at)
            return WriteResult(True, Observation(record, store_time=store_time), bool(suspect))
        if not present:
            return WriteResult(False, Observation(None, store_time=store_time))
        if not valid:
            self._foreign_row()
            return WriteResult(False, Observation(None, corrupt=True, store_time=store_time))
        record = LeaderRecord(holder, token, term, version, nominee, renewed_at)
        observation = Observation(record, store_time=store_time, suspect=bool(suspect))
        return WriteResult(False, observation)

    def _foreign_row(self) -> None:
        if not self._warned_foreign:
            self._warned_foreign = True
            logger.warning(
                "leaderfeed %r: the row %r of %s on %s is not a leaderfeed record; it is "
                "ignored and will be claimed over",
                self.name,
                self.name,
                self.statements.records_name,
                self.display_url,
            )

    def _read(self) -> Observation:
        return self._reply(self.statements.read).observation

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        result = self._reply(
            self.statements.claim,
            expected=expected_version,
            holder=holder,
            token=token,
            min_term=min_term,
            min_version=min_version,
        )
        if not result.ok and result.observation.record is None and expected_version == 0:
            # Our insert met a racing claimer's row, which this statement could not see:
            # report what won instead of "missing".
            found = self._read()
            if found.record is not None or found.corrupt:
                return WriteResult(False, found)
        return result

    def _renew(self, term: int, token: str) -> WriteResult:
        return self._reply(self.statements.renew, term=term, token=token)

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        return self._reply(self.statements.resign, term=term, token=token, nominee=nominee)

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        return self._reply(self.statements.nominate, expected=expected_version, nominee=nominee)

    # -- schedule state ------------------------------------------------------------------------

    def _read_entries(self) -> dict[str, str]:
        rows = self._execute(self.statements.read_entries, {"name": self.name})
        return {str(entry): str(state) for entry, state in rows}

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        rows = self._execute(
            self.statements.write_entry,
            {
                "name": self.name,
                "term": term,
                "token": token,
                "entry": entry,
                "has_expected": expected is not None,
                "expected": expected,
                "new": new,
            },
        )
        return bool(rows[0][0])

    # -- once-only marks -----------------------------------------------------------------------

    def _mark_once(self, key: str, value: str, ttl: float) -> str | None:
        if "\x00" in key or "\x00" in value:  # psycopg's error would read as an outage
            raise ValueError("a mark's key and value cannot hold NUL in PostgreSQL text")
        params = {"name": self.name, "key": key, "value": value, "ttl": ttl}
        deadline = time.monotonic() + self.timeout
        while True:
            wrote, held = self._execute(self.statements.mark_once, params)[0]
            if not wrote and held is None:  # refused by a mark newer than our snapshot
                rows = self._execute(self.statements.held_mark, params)
                held = rows[0][0] if rows else None
            if wrote or held is not None:
                break
            # The mark that refused ours has expired since (or was swept): mark again.
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"mark once: {self.display_url} kept no mark of {key!r}")
        self._sweep_marks()
        return None if wrote else str(held)

    def _sweep_marks(self) -> None:
        """Delete expired marks, bounded, at most every MARK_SWEEP_INTERVAL seconds."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + MARK_SWEEP_INTERVAL
        try:
            self._execute(self.statements.sweep_marks, {"limit": MARK_SWEEP_LIMIT}, rows=False)
        except psycopg.Error as exc:  # the mark itself was made; the next sweep retries
            logger.debug("leaderfeed %r: sweeping expired marks failed: %s", self.name, exc)

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        return ListenSubscription(self)

    def holder_watch(self, report: Callable[[int], None]) -> HolderWatch | None:
        if not self.fast_failover:
            return None
        return HolderLock(self, report, poll=max(self.timeout, 0.1))
