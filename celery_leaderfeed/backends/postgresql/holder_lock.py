"""``fast_failover``: the leader's session holds an advisory lock that followers wait for.

PostgreSQL drops a session's advisory locks the moment the session ends - within tens of
milliseconds of a ``kill -9`` of an idle client, whose socket the kernel closes. The leader of
term T holds the exclusive lock ``(election key, T)`` on a connection used for nothing else;
each follower waits for a *shared* lock on the same key on a connection of its own. A
follower that found the lock held and then gets it has seen the holder's session end, and
reports term T to the engine, which claims at once (:meth:`Election.holder_gone
<celery_leaderfeed.engine.election.Election.holder_gone>`). Shared locks never conflict with
each other, so every follower wakes; the claim's compare-and-set picks one.

One key per term: a paused old leader that still holds its term's lock delays nobody, and a
follower never mistakes one term's holder for another's. A follower that gets the lock before
the leader ever took it (the term just began, or the leader runs without ``fast_failover``)
has seen nothing: it lets go and looks again a heartbeat later.

A transaction-pooling proxy (PgBouncer's ``pool_mode=transaction`` or ``statement``) hands
each transaction to any server connection: a session lock would stay on a server connection
other clients reuse. Each new connection is checked for that before it is used
(:func:`_session_shared`), and refused with a :class:`~celery_leaderfeed.errors.ConfigurationError`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ...engine.retry import FaultLog
from ...errors import BackendUnavailable, ConfigurationError
from ..base import HolderWatch

if TYPE_CHECKING:
    from .backend import PostgresBackend

__all__ = ["HolderLock", "lock_keys"]

logger = logging.getLogger(__name__)

#: Seconds between two tries of a leader whose lock a follower holds for a moment.
_RETAKE = 0.02
#: Longest single lock wait of a follower, in seconds (then it waits again).
WAIT_SLICE = 5.0
#: How many times a wait that is no longer wanted is cancelled, and the seconds in between.
_CANCEL_TRIES = 5
_CANCEL_PAUSE = 0.2


def lock_keys(schema: str, table: str, name: str, term: int) -> tuple[int, int]:
    """The two 32-bit keys of term ``term``'s lock (``pg_advisory_lock(int, int)``)."""
    digest = hashlib.sha256(f"leaderfeed:{schema}.{table}/{name}".encode()).digest()
    election = int.from_bytes(digest[:4], "big", signed=True)
    low = term & 0xFFFFFFFF
    return election, low - (1 << 32) if low >= 1 << 31 else low


def _session_shared(
    conn: psycopg.Connection[Any], another: Callable[[], psycopg.Connection[Any]]
) -> str | None:
    """How ``conn``'s session turned out to be shared with other clients, or None.

    A transaction pooler gives each statement whichever server connection is free - usually
    the one released last (PgBouncer's default), so one client alone would see one session.
    Hence a second client: it must not see a setting ``conn`` made for its session, and
    ``conn``'s statements must keep running in one server process.
    """
    probe = uuid.uuid4().hex
    first = conn.execute(
        "SELECT pg_backend_pid(), set_config('leaderfeed.session_probe', %s, false)", [probe]
    ).fetchone()
    other = another()
    try:
        seen = other.execute("SELECT current_setting('leaderfeed.session_probe', true)").fetchone()
        if seen is not None and seen[0] == probe:
            other.execute("SELECT set_config('leaderfeed.session_probe', '', false)")
            return "another client's statement ran in its session"
    finally:
        other.close()
    second = conn.execute("SELECT pg_backend_pid()").fetchone()
    if first is None or second is None or first[0] != second[0]:
        return "its statements ran in different server sessions"
    return None


class HolderLock(HolderWatch):
    """The PostgreSQL :class:`~celery_leaderfeed.backends.base.HolderWatch` (see the module).

    ``poll``: seconds between two looks at a lock nobody held yet, and between two pings of
    the session while holding or idle. A follower's wait on a held lock ends when the lock is
    let go, when the engine wants something else (the wait is cancelled), or after
    :data:`WAIT_SLICE` seconds, when it starts again.
    """

    def __init__(
        self, backend: PostgresBackend, report: Callable[[int], None], *, poll: float
    ) -> None:
        self._backend = backend
        self._report = report
        self._poll = poll
        self._changed = threading.Condition()
        #: (leading, term) as the engine last said.
        self._want: tuple[bool, int | None] = (False, None)
        #: What a blocked lock wait is for; set and cleared under ``_wait_lock``, which a
        #: cancel holds while it is sent, so it can only ever reach that wait.
        self._waiting_on: tuple[bool, int | None] | None = None
        self._wait_lock = threading.Lock()
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = self._open()
        #: The term whose lock this session holds exclusively (leader).
        self._held: int | None = None
        #: The term whose lock a follower found held, and the last term it reported.
        self._seen_held: int | None = None
        self._reported: int | None = None
        self._faults = FaultLog(logger, f"leaderfeed {backend.name!r}", 60.0)
        self._thread = threading.Thread(
            target=self._run, name=f"leaderfeed-holder-lock[{backend.name}]", daemon=True
        )
        self._thread.start()

    # -- what the engine thread says -----------------------------------------------------------

    def lead(self, term: int) -> None:
        self._set((True, term))

    def follow(self, term: int | None) -> None:
        self._set((False, term))

    def _set(self, want: tuple[bool, int | None]) -> None:
        with self._changed:
            if want == self._want:
                return
            self._want = want
            self._changed.notify_all()
        if self._waiting_on is not None:
            # A cancel is a round trip on a connection of its own: never on the engine thread.
            threading.Thread(
                target=self._cancel_wait, name="leaderfeed-lock-cancel", daemon=True
            ).start()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._cancel_wait()
        self._thread.join(WAIT_SLICE + 2 * self._backend.timeout)
        self._drop()

    def _cancel_wait(self) -> None:
        """End a follower's blocked lock wait that is no longer wanted. Sent again a few times:
        a cancel that reaches the server before the wait's statement does is lost."""
        for _ in range(_CANCEL_TRIES):
            with self._wait_lock:
                conn, waiting = self._conn, self._waiting_on
                if conn is None or waiting is None or (waiting == self._want and not self._closed):
                    return
                try:
                    conn.cancel_safe(timeout=self._backend.timeout)
                except (psycopg.Error, OSError):
                    logger.debug("cancelling a lock wait failed", exc_info=True)
            # On the cancel's own thread (or close's): give the wait a moment to end.
            until = time.monotonic() + _CANCEL_PAUSE
            while self._waiting_on is waiting and time.monotonic() < until:
                time.sleep(0.005)

    # -- the connection ------------------------------------------------------------------------

    def _open(self) -> psycopg.Connection[Any]:
        """A new connection, refused when a pooler shares its session with other clients."""
        backend = self._backend
        with backend.mapped_errors("the fast-failover lock"):
            conn = backend.open_connection()
            try:
                shared = _session_shared(conn, backend.open_connection)
                # Lock waits are cancelled when they should end; this only bounds each slice.
                millis = int(max(WAIT_SLICE, backend.timeout) * 1000)
                conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(millis)))
            except BaseException:
                conn.close()
                raise
        if shared:
            conn.close()
            raise ConfigurationError(
                f"fast_failover on {backend.display_url} needs a database session of its own, "
                f"but {shared}: a transaction-pooling proxy (PgBouncer pool_mode=transaction "
                f"or statement) is in between, and would leave the leader's lock on a server "
                f"connection other clients reuse; connect directly or through session pooling, "
                f"or turn fast_failover off"
            )
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._held = None
        self._seen_held = None
        if conn is not None:
            try:
                conn.close()  # ends the session: the server drops its locks
            except Exception:
                logger.debug("error closing the fast-failover connection", exc_info=True)

    def _scalar(self, statement: str, term: int) -> Any:
        assert self._conn is not None
        backend = self._backend
        keys = lock_keys(backend.schema, backend.table, backend.name, term)
        row = self._conn.execute(statement, keys).fetchone()
        return None if row is None else row[0]

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                want = self._want
            try:
                with self._backend.mapped_errors("the fast-failover lock"):
                    self._turn(want)
            except ConfigurationError as exc:
                logger.error("leaderfeed %r: %s", self._backend.name, exc)
                self._drop()
                return  # the election goes on, without fast failover
            except BackendUnavailable as exc:
                self._drop()
                self._faults.failed(
                    time.monotonic(),
                    "the fast-failover lock",
                    exc,
                    note="; failover waits the election timeout meanwhile",
                )
                self._pause(want, self._poll)
            else:
                self._faults.recovered(time.monotonic(), "the fast-failover lock")

    def _turn(self, want: tuple[bool, int | None]) -> None:
        if self._conn is None:
            self._conn = self._open()
        leading, term = want
        if self._held is not None and (not leading or term != self._held):
            self._scalar("SELECT pg_advisory_unlock(%s, %s)", self._held)
            self._held = None
        if leading and term is not None:
            self._hold(want, term)
        elif term is not None and term != self._reported:
            self._watch(want, term)
        else:
            self._idle(want)

    def _pause(self, want: tuple[bool, int | None], seconds: float) -> None:
        """Wait ``seconds`` or until what the engine wants changes."""
        with self._changed:
            if self._want == want and not self._closed:
                self._changed.wait(seconds)

    def _idle(self, want: tuple[bool, int | None]) -> None:
        """Nothing to take or watch: check the session at the poll pace (a leader whose
        session broke takes its lock again on a new one)."""
        self._pause(want, self._poll)
        if self._want == want and self._conn is not None:
            self._conn.execute("SELECT 1")

    def _hold(self, want: tuple[bool, int | None], term: int) -> None:
        """Take term ``term``'s lock exclusively, then keep the session checked."""
        if self._held == term:
            self._idle(want)
        elif self._scalar("SELECT pg_try_advisory_lock(%s, %s)", term):
            self._held = term
        else:
            self._pause(want, _RETAKE)  # a follower is looking at it for a moment

    def _watch(self, want: tuple[bool, int | None], term: int) -> None:
        """Wait for the session holding term ``term``'s lock to end; report that once."""
        if self._seen_held != term:
            if self._scalar("SELECT pg_try_advisory_lock_shared(%s, %s)", term):
                # Nobody holds it yet (or its leader runs without fast_failover): look later.
                self._scalar("SELECT pg_advisory_unlock_shared(%s, %s)", term)
                self._pause(want, self._poll)
                return
            self._seen_held = term
        with self._wait_lock:
            if self._want != want or self._closed:
                return
            self._waiting_on = want
        try:
            self._scalar("SELECT pg_advisory_lock_shared(%s, %s)", term)
        except pg_errors.QueryCanceled:
            return  # cancelled, or the slice ended: look at what is wanted now
        finally:
            with self._wait_lock:
                self._waiting_on = None
        self._scalar("SELECT pg_advisory_unlock_shared(%s, %s)", term)
        self._reported = term
        logger.debug("leaderfeed %r: the session holding term %d ended", self._backend.name, term)
        self._report(term)
