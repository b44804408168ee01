"""``LeaderFeed``: the public engine - one thread driving an :class:`~.election.Election`.

Threads, and what each may do:

* the engine thread runs the election: every store call and every role change happens there;
* a feed thread per subscription only turns what the feed delivers into commands on the
  engine's queue (a broken feed reports itself the same way and ends);
* the listener thread calls user listeners, so a slow listener never delays a renewal.

Other threads only read immutable snapshots (``lease``, ``known``) or queue commands, and
every wait is on a queue or condition that ``stop()`` wakes at once.

Every retry waits a backoff delay and every lasting fault is logged at a bounded rate
(:mod:`~celery_leaderfeed.engine.retry`): a store that refuses us for good
(:class:`~celery_leaderfeed.errors.StoreRefused`) is an ERROR naming the cause and the fix,
retried slowly; an outage is a WARNING, retried at the heartbeat's pace at most.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..backends import backend_from_url
from ..backends.base import Backend, FeedEvent, Subscription
from ..errors import BackendUnavailable, ConfigurationError, LeaderfeedError, LeaderfeedTimeout
from ..record import Observation
from ..timing import Timing
from .election import Election, Lease, Role, Stats
from .listeners import Event, Listener, Listeners
from .retry import Backoff, FaultLog, refused_pace, report_interval

__all__ = ["LeaderFeed", "Status"]

logger = logging.getLogger("celery_leaderfeed")


class Status(str, enum.Enum):
    """Lifecycle of a feed (kept apart from its :class:`~.election.Role`)."""

    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value


def default_member_id() -> str:
    """``host:pid:random`` - readable in logs, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class _FeedItem:
    generation: int
    event: FeedEvent


@dataclass(frozen=True, slots=True)
class _FeedLost:
    generation: int
    error: BaseException


@dataclass(frozen=True, slots=True)
class _Elect:
    member_id: str


_STOP = object()
_POLL_SECONDS = 0.25


class _FeedPump(threading.Thread):
    """Moves one subscription's events onto the engine queue until closed or broken."""

    def __init__(
        self, subscription: Subscription, generation: int, sink: Callable[[object], None], name: str
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.subscription = subscription
        self.generation = generation
        self.sink = sink
        self._closed = threading.Event()

    def run(self) -> None:
        try:
            while not self._closed.is_set():
                for event in self.subscription.poll(_POLL_SECONDS):
                    self.sink(_FeedItem(self.generation, event))
        except Exception as exc:  # noqa: BLE001 - any failure means the feed is gone
            if not self._closed.is_set():
                self.sink(_FeedLost(self.generation, exc))
        finally:
            self.subscription.close()

    def close(self) -> None:
        """Ask the pump to end; it closes the subscription from its own thread."""
        self._closed.set()


class LeaderFeed:
    """One member of the election ``name`` held in the store at ``backend``.

    ::

        with LeaderFeed("redis://localhost:6379/0", name="billing") as feed:
            if feed.wait_for_leadership(timeout=10):
                run_leader_only_work(fencing_token=feed.term)

    ``is_leader`` turns False by itself when the lease runs out, even if the engine thread is
    stuck or the process was paused; pass ``term`` to anything the leader writes so the
    receiver can refuse writes from an older term.
    """

    def __init__(
        self,
        backend: str | Backend = "memory://",
        *,
        name: str = "default",
        member_id: str | None = None,
        heartbeat_interval: float = 1.0,
        election_timeout_min: float = 3.0,
        election_timeout_max: float = 4.0,
        operation_timeout: float | None = None,
        create_if_missing: bool = True,
        options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timing = Timing(
            heartbeat_interval=heartbeat_interval,
            election_timeout_min=election_timeout_min,
            election_timeout_max=election_timeout_max,
            operation_timeout=operation_timeout,
        )
        if member_id is None:
            member_id = default_member_id()
        if not isinstance(member_id, str) or not member_id.strip() or len(member_id) > 200:
            raise ConfigurationError(
                f"member_id must be a non-empty string of <= 200 characters, got {member_id!r}"
            )
        if isinstance(backend, Backend):
            if options:
                raise ConfigurationError("pass options to the Backend itself, not with an instance")
            self.backend = backend
        else:
            self.backend = backend_from_url(
                backend, name=name, timeout=self.timing.timeout, options=options
            )
        self._id = member_id
        self._create_if_missing = bool(create_if_missing)
        self._clock = clock
        self._rng = random.Random()
        self._listeners = Listeners(f"leaderfeed-listeners[{self.backend.name}]")
        self._observers: list[Callable[[LeaderFeed], None]] = []
        self._changed = threading.Condition()
        self._status = Status.STOPPED
        self._lifecycle = threading.Lock()
        self._election: Election | None = None
        self._thread: threading.Thread | None = None
        self._commands: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._retry = False
        self._pump: _FeedPump | None = None
        self._generation = 0
        self._resubscribe_at: float | None = None
        refused = refused_pace(self.timing)
        self._backoff = Backoff(
            self._rng, 0.05, max(2.0, self.timing.heartbeat_interval), refused_cap=refused
        )
        label, every = f"leaderfeed {self.name!r}", report_interval(self.timing)
        #: Faults of the record's reads and writes (the election's) and of the change feed.
        self._store_faults = FaultLog(logger, label, every)
        self._feed_faults = FaultLog(logger, label, every)
        self._engine_faults = FaultLog(logger, label, every)

    # -- identity and state --------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This member's id (given, or ``host:pid:random``)."""
        return self._id

    member_id = id

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def status(self) -> Status:
        return self._status

    @property
    def lease(self) -> Lease:
        """The current lease snapshot (role, term, deadline)."""
        election = self._election
        return election.lease if election is not None else Lease(Role.FOLLOWER)

    @property
    def role(self) -> Role:
        return Role.LEADER if self.is_leader else Role.FOLLOWER

    @property
    def is_leader(self) -> bool:
        """True only while this member holds an unexpired lease (checked on every call)."""
        return self.lease.valid(self._clock())

    @property
    def stats(self) -> Stats:
        """A copy of this member's counters (claims, renewals, feed events, ...)."""
        election = self._election
        return dataclasses.replace(election.stats) if election is not None else Stats()

    @property
    def known(self) -> Observation | None:
        """The last state of the leader record this member saw."""
        election = self._election
        return election.known if election is not None else None

    @property
    def fault(self) -> str | None:
        """What fails while the store or its change feed fails (password hidden), else None."""
        return self._store_faults.current or self._feed_faults.current

    @property
    def leader_id(self) -> str | None:
        """The member the record names as leader (None: vacant or unknown)."""
        known = self.known
        return known.leader_id if known is not None else None

    @property
    def term(self) -> int | None:
        """The term of the record as last seen; while leader, the term this member holds."""
        lease = self.lease
        if lease.role is Role.LEADER:
            return lease.term
        known = self.known
        return known.record.term if known is not None and known.record is not None else None

    def __repr__(self) -> str:
        return (
            f"<LeaderFeed {self._id!r} {self.status.value} {self.role.value} "
            f"on {self.backend.display_url} name={self.name!r}>"
        )

    # -- listeners -----------------------------------------------------------------------------

    def on(self, event: str | Event, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on ``event`` (see :class:`Event`); returns a function removing it."""
        return self._listeners.add(event, listener)

    def off(self, event: str | Event, listener: Listener) -> None:
        self._listeners.remove(event, listener)

    def add_observer(self, observer: Callable[[LeaderFeed], None]) -> None:
        """Call ``observer(feed)`` on the engine thread after every change, renewals included.

        For integrations that mirror the lease elsewhere (the Celery step writes it to shared
        memory); it must be quick and must not block.
        """
        self._observers.append(observer)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, *, retry: bool = False, timeout: float | None = None) -> LeaderFeed:
        """Connect, subscribe and read the record, then elect in the background.

        With ``retry=False`` (default) this blocks until the first read and raises
        :class:`BackendUnavailable` if the store cannot be reached. With ``retry=True`` it
        returns at once and keeps reconnecting with backoff.
        """
        with self._lifecycle:
            if self._status is not Status.STOPPED:
                raise LeaderfeedError(f"cannot start a feed that is {self._status.value}")
            self._status = Status.STARTING
            self._retry = retry
            self._started.clear()
            self._start_error = None
            self._commands = queue.SimpleQueue()
            self._election = Election(
                self.backend,
                self._id,
                uuid.uuid4().hex,
                self.timing,
                clock=self._clock,
                rng=self._rng,
                emit=self._listeners.emit,
                on_update=self._updated,
                faults=self._store_faults,
            )
            self._listeners.start()
            self._thread = threading.Thread(
                target=self._run, name=f"leaderfeed-engine[{self.name}]", daemon=True
            )
            self._thread.start()
        if retry:
            return self
        wait = timeout if timeout is not None else 3 * self.timing.timeout + 1.0
        if not self._started.wait(wait):
            self.stop()
            raise LeaderfeedTimeout(f"start did not finish within {wait:g} s")
        self._raise_start_failure()
        return self

    def _raise_start_failure(self) -> None:
        error = self._start_error
        if error is not None:
            self.stop()
            raise error

    def stop(self, timeout: float | None = None) -> None:
        """Stop; a leader first stops acting, then resigns so another member leads at once."""
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._commands.put(_STOP)
            if thread is not threading.current_thread():
                thread.join(timeout if timeout is not None else 2 * self.timing.timeout + 1.0)
            self._thread = None
        self._listeners.stop(timeout=1.0)

    def __enter__(self) -> LeaderFeed:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- waiting and electing --------------------------------------------------------------------

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this member leads (True) or ``timeout`` passes (False)."""
        return self._wait(lambda: self.is_leader, timeout)

    def wait_for_leader(self, timeout: float | None = None) -> str | None:
        """Block until some member is known to lead; return its id (None on timeout)."""
        if self._wait(lambda: self.leader_id is not None, timeout):
            return self.leader_id
        return None

    def elect(self, member_id: str | None = None, *, timeout: float | None = None) -> None:
        """Make ``member_id`` (default: this member) the leader; the current leader steps down
        before the nominee takes over. Raises :class:`LeaderfeedTimeout` if that has not
        happened within ``timeout`` (default: twice the maximum election timeout)."""
        target = self._id if member_id is None else member_id
        if not isinstance(target, str) or not target:
            raise ConfigurationError(f"member_id must be a non-empty string, got {target!r}")
        if self._status is not Status.STARTED:
            raise LeaderfeedError(f"cannot elect on a feed that is {self._status.value}")
        self._commands.put(_Elect(target))
        wait = timeout if timeout is not None else 2 * self.timing.election_timeout_max

        def done() -> bool:
            return self.is_leader if target == self._id else self.leader_id == target

        if not self._wait(done, wait):
            raise LeaderfeedTimeout(f"{target!r} did not become leader within {wait:g} s")

    def _wait(self, condition: Callable[[], bool], timeout: float | None) -> bool:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not condition():
                if self._status is Status.STOPPED and self._thread is None:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
            return True

    # -- the engine thread -------------------------------------------------------------------------

    def _updated(self) -> None:
        with self._changed:
            self._changed.notify_all()
        for observer in self._observers:
            try:
                observer(self)
            except Exception:
                logger.exception("leaderfeed observer %r raised", observer)

    def _run(self) -> None:
        election = self._election
        assert election is not None
        try:
            if self._open(election):
                self._status = Status.STARTED
                self._started.set()
                self._updated()
                self._loop(election)
        finally:
            self._status = Status.STOPPING
            try:
                election.shutdown()
            except Exception:
                logger.exception("leaderfeed %r: error while resigning", self.name)
            self._drop_feed()
            self.backend.close()
            self._status = Status.STOPPED
            self._started.set()
            self._updated()

    def _open(self, election: Election) -> bool:
        """Connect and read the record; retry with backoff if asked to. False: stopped first."""
        backoff = Backoff(
            self._rng,
            0.1,
            max(5.0, self.timing.heartbeat_interval),
            refused_cap=refused_pace(self.timing),
        )
        while True:
            try:
                self.backend.connect()
                if self._create_if_missing:
                    self.backend.create()
                self._subscribe(election)
                election.bootstrap()
                self._store_faults.recovered(self._clock(), "joining the election")
                return True
            except BackendUnavailable as exc:
                self._drop_feed()
                if not self._retry:
                    self._start_error = exc
                    return False
                self._store_faults.failed(
                    self._clock(),
                    "joining the election",
                    exc,
                    note="; retrying, following meanwhile",
                )
                self._listeners.emit(Event.HEARTBEAT_ERROR.value, exc)
                if self._take(backoff.next(exc)) is _STOP:
                    return False
            except Exception as exc:  # noqa: BLE001 - reported to start() and the log
                # A configuration the store refuses (or a bug) will not heal by retrying.
                self._drop_feed()
                self._start_error = exc
                logger.error("leaderfeed %r: cannot start: %s", self.name, exc)
                return False

    def _loop(self, election: Election) -> None:
        backoff = Backoff(
            self._rng, self.timing.heartbeat_interval / 4, self.timing.heartbeat_interval
        )
        while True:
            try:
                delay = self._tick(election)
            except Exception as exc:  # noqa: BLE001 - reported (with its traceback) below
                # A bug must not kill the election: report it and keep the clock running.
                self._engine_faults.failed(self._clock(), "the engine", exc)
                delay = backoff.next(exc)
            else:
                backoff.reset()
                self._engine_faults.recovered(self._clock(), "the engine")
            command = self._take(delay)
            while command is not None:
                if command is _STOP:
                    return
                try:
                    self._handle(election, command)
                except Exception as exc:  # noqa: BLE001 - reported (with its traceback)
                    self._engine_faults.failed(self._clock(), f"handling {command!r}", exc)
                command = self._take(0)

    def _take(self, timeout: float) -> object | None:
        try:
            if timeout <= 0:
                return self._commands.get_nowait()
            return self._commands.get(timeout=timeout)
        except queue.Empty:
            return None

    def _tick(self, election: Election) -> float:
        delay = election.step(self._clock())
        now = self._clock()
        if election.feed_suspect:
            election.feed_suspect = False
            quiet = BackendUnavailable("it went quiet while renewals went on")
            self._feed_faults.failed(now, "the change feed", quiet, note="; subscribing again")
            self._drop_feed()
            election.feed_lost(now)
            self._resubscribe_at = now
        if self._pump is None and self._resubscribe_at is not None and now >= self._resubscribe_at:
            self._subscribe(election)
        if self._resubscribe_at is not None:
            delay = min(delay, max(0.0, self._resubscribe_at - self._clock()))
        return delay

    def _handle(self, election: Election, command: object) -> None:
        now = self._clock()
        if isinstance(command, _FeedItem):
            if command.generation == self._generation:
                # It delivers, so it works: a feed that breaks right after each subscribe
                # keeps backing off instead.
                self._backoff.reset()
                self._feed_faults.recovered(now, "the change feed")
                election.feed_event(command.event, now)
        elif isinstance(command, _FeedLost):
            if command.generation == self._generation and self._pump is not None:
                self._pump = None
                self._feed_failed(election, command.error, now)
        elif isinstance(command, _Elect):
            election.request_leader(command.member_id, now)

    def _subscribe(self, election: Election) -> None:
        try:
            subscription = self.backend.subscribe()
        except BackendUnavailable as exc:
            self._feed_failed(election, exc, self._clock())
            return
        self._generation += 1
        self._pump = _FeedPump(
            subscription, self._generation, self._commands.put, f"leaderfeed-feed[{self.name}]"
        )
        self._pump.start()
        self._resubscribe_at = None
        election.feed_started(self._clock())
        logger.debug("leaderfeed %r: subscribed to %s", self.name, self.backend.display_url)
        self._listeners.emit(Event.SUBSCRIBE_STARTED.value)

    def _feed_failed(self, election: Election, error: BaseException, now: float) -> None:
        delay = self._backoff.next(error)
        self._feed_faults.failed(
            now,
            "the change feed",
            error,
            note=f"; reading the record every {self.timing.heartbeat_interval:g} s and "
            f"subscribing again with backoff",
        )
        self._listeners.emit(Event.SUBSCRIBE_ERROR.value, error)
        election.feed_lost(now)
        self._resubscribe_at = now + delay

    def _drop_feed(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            self._generation += 1  # anything still in flight from it is now stale
            pump.close()
