"""``LeaderFeed``: the public engine - one thread driving an :class:`~.election.Election`.

Threads, and what each may do:

* the engine thread runs the election: every store call and every role change happens there.
  Each turn it takes the commands that arrived, steps the election, then - if the lease or the
  record changed - wakes waiters and calls observers, once however many changes the turn made;
* a feed thread per subscription only turns what the feed delivers into commands on the
  engine's queue (a broken feed reports itself the same way and ends); the engine's
  :class:`~.subscription.SubscriptionSupervisor` opens them and replaces broken or deaf ones;
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
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ..backends import backend_from_url
from ..backends.base import Backend, HolderWatch
from ..errors import BackendUnavailable, ConfigurationError, LeaderfeedError, LeaderfeedTimeout
from ..record import Observation
from ..timing import Timing
from .election import Election, Lease, Resignation, Role, Stats
from .listeners import Event, Listener, Listeners
from .retry import Backoff, FaultLog, refused_pace, report_interval
from .subscription import FeedItem, FeedLost, SubscriptionSupervisor

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
class _Elect:
    member_id: str


@dataclass(frozen=True, slots=True)
class _HolderGone:
    term: int


_STOP = object()


class LeaderFeed:
    """One member of the election ``name`` held in the store at ``backend``.

    ::

        with LeaderFeed("redis://localhost:6379/0", name="billing") as feed:
            if feed.wait_for_leadership(timeout=10):
                run_leader_only_work(fencing_token=feed.term)

    ``is_leader`` turns False by itself when the lease runs out, even if the engine thread is
    stuck or the process was paused; pass ``term`` to anything the leader writes so the
    receiver can refuse writes from an older term.

    Timings come as a :class:`~celery_leaderfeed.Timing` (``timing=Timing(...)``) or as the
    keywords ``heartbeat_interval``, ``election_timeout_min``, ``election_timeout_max`` and
    ``operation_timeout``, not both.
    """

    def __init__(
        self,
        backend: str | Backend = "memory://",
        *,
        name: str = "default",
        member_id: str | None = None,
        timing: Timing | None = None,
        heartbeat_interval: float | None = None,
        election_timeout_min: float | None = None,
        election_timeout_max: float | None = None,
        operation_timeout: float | None = None,
        create_if_missing: bool = True,
        options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timing = _timing(
            timing,
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
        self._listeners = Listeners(f"leaderfeed-listeners[{self.backend.name}]")
        self._observers: list[Callable[[LeaderFeed], None]] = []
        self._resign_hooks: list[Callable[[Resignation], None]] = []
        self._changed = threading.Condition()
        self._status = Status.STOPPED
        self._lifecycle = threading.Lock()
        # What start() creates for one run of the engine (kept after stop for the properties).
        self._election: Election | None = None
        self._subscription: SubscriptionSupervisor | None = None
        self._holder_watch: HolderWatch | None = None
        self._commands: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

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
        election, subscription = self._election, self._subscription
        if election is None or subscription is None:
            return None
        return election.faults.current or subscription.faults.current

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
        """Call ``observer(feed)`` on the engine thread after each turn that changed the lease
        or the record (so once per renewal), and when the feed starts and stops.

        For integrations that mirror the lease elsewhere (the Celery step writes it to shared
        memory); it must be quick and must not block.
        """
        self._observers.append(observer)

    def add_resign_hook(self, hook: Callable[[Resignation], None]) -> None:
        """Call ``hook(resignation)`` on the engine thread when this member is about to give
        leadership up of its own accord (``elect`` of another member, ``stop``): its lease is
        still valid and nothing is written yet. The resign follows once every hook returned.

        For integrations that must stop leader-only work before another member may start it
        (the Celery step stops consuming the leader queue). A hook should return by
        ``resignation.deadline`` (at most one heartbeat away): the engine does not renew while
        it runs. One that raises is logged and the resign goes ahead. A lease that runs out is
        not announced in advance: nothing calls a hook then.
        """
        self._resign_hooks.append(hook)

    def _before_resign(self, resignation: Resignation) -> None:
        """Run the resign hooks (engine thread); report one that raised or ran late."""
        for hook in self._resign_hooks:
            try:
                hook(resignation)
            except Exception:
                logger.exception("leaderfeed resign hook %r raised", hook)
        late = self._clock() - resignation.deadline
        if self._resign_hooks and late > 0:
            logger.warning(
                "leaderfeed %r: the resign hooks returned %.3f s after their deadline",
                self.name,
                late,
            )

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
            rng = random.Random()
            commands: queue.SimpleQueue[object] = queue.SimpleQueue()
            self._commands = commands
            # Done once the engine joined the election, or with the error that stopped it.
            started: futures.Future[None] = futures.Future()
            self._election = election = Election(
                self.backend,
                self._id,
                uuid.uuid4().hex,
                self.timing,
                clock=self._clock,
                rng=rng,
                emit=self._listeners.emit,
                before_resign=self._before_resign,
            )
            self._subscription = subscription = SubscriptionSupervisor(
                self.backend, election, commands.put, rng=rng, emit=self._listeners.emit
            )
            self._listeners.start()
            self._thread = threading.Thread(
                target=self._run,
                args=(election, subscription, started, retry),
                name=f"leaderfeed-engine[{self.name}]",
                daemon=True,
            )
            self._thread.start()
        if retry:
            return self
        wait = timeout if timeout is not None else 3 * self.timing.timeout + 1.0
        if not futures.wait([started], wait).done:
            self.stop()
            raise LeaderfeedTimeout(f"start did not finish within {wait:g} s")
        error = started.exception()
        if error is not None:
            self.stop()
            raise error
        return self

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

    def _notify(self) -> None:
        """Wake waiters and call observers: after a turn that changed something, start, stop."""
        with self._changed:
            self._changed.notify_all()
        for observer in self._observers:
            try:
                observer(self)
            except Exception:
                logger.exception("leaderfeed observer %r raised", observer)

    def _run(
        self,
        election: Election,
        subscription: SubscriptionSupervisor,
        started: futures.Future[None],
        retry: bool,
    ) -> None:
        try:
            if self._open(election, subscription, started, retry):
                self._status = Status.STARTED
                started.set_result(None)
                self._notify()
                self._loop(election, subscription)
        finally:
            self._status = Status.STOPPING
            try:
                election.shutdown()
            except Exception:
                logger.exception("leaderfeed %r: error while resigning", self.name)
            subscription.close()
            self._close_holder_watch()  # after the resign: the record says vacant first
            self.backend.close()
            self._status = Status.STOPPED
            if not started.done():  # stopped before it had started
                started.set_result(None)
            self._notify()

    def _open(
        self,
        election: Election,
        subscription: SubscriptionSupervisor,
        started: futures.Future[None],
        retry: bool,
    ) -> bool:
        """Connect and read the record; retry with backoff if asked to. False: not started."""
        backoff = Backoff(
            election.rng,
            0.1,
            max(5.0, self.timing.heartbeat_interval),
            refused_cap=refused_pace(self.timing),
        )
        while True:
            try:
                self.backend.connect()
                if self._create_if_missing:
                    self.backend.create()
                subscription.subscribe()
                if self._holder_watch is None:
                    self._holder_watch = self.backend.holder_watch(self._holder_gone)
                election.bootstrap()
                election.faults.recovered(self._clock(), "joining the election")
                return True
            except BackendUnavailable as exc:
                subscription.close()
                if not retry:
                    started.set_exception(exc)
                    return False
                election.faults.failed(
                    self._clock(),
                    "joining the election",
                    exc,
                    note="; retrying, following meanwhile",
                )
                self._listeners.emit(Event.HEARTBEAT_ERROR, exc)
                if self._take(backoff.next(exc)) is _STOP:
                    return False
            except Exception as exc:  # noqa: BLE001 - reported to start() and the log
                # A configuration the store refuses (or a bug) will not heal by retrying.
                subscription.close()
                started.set_exception(exc)
                logger.error("leaderfeed %r: cannot start: %s", self.name, exc)
                return False

    def _loop(self, election: Election, subscription: SubscriptionSupervisor) -> None:
        """Turn after turn: step the election, notify if it changed, take the commands."""
        backoff = Backoff(
            election.rng, self.timing.heartbeat_interval / 4, self.timing.heartbeat_interval
        )
        faults = FaultLog(logger, f"leaderfeed {self.name!r}", report_interval(self.timing))
        notified = election.revision
        while True:
            try:
                delay = self._step(election, subscription)
            except Exception as exc:  # noqa: BLE001 - reported (with its traceback) below
                # A bug must not kill the election: report it and keep the clock running.
                faults.failed(self._clock(), "the engine", exc)
                delay = backoff.next(exc)
            else:
                backoff.reset()
                faults.recovered(self._clock(), "the engine")
            if election.revision != notified:
                notified = election.revision
                self._notify()
            command = self._take(delay)
            while command is not None:
                if command is _STOP:
                    return
                try:
                    self._handle(election, subscription, command)
                except Exception as exc:  # noqa: BLE001 - reported (with its traceback)
                    faults.failed(self._clock(), f"handling {command!r}", exc)
                command = self._take(0)

    def _take(self, timeout: float) -> object | None:
        try:
            if timeout <= 0:
                return self._commands.get_nowait()
            return self._commands.get(timeout=timeout)
        except queue.Empty:
            return None

    def _step(self, election: Election, subscription: SubscriptionSupervisor) -> float:
        turn = election.step(self._clock())
        now = self._clock()
        if turn.feed_quiet:
            subscription.went_quiet(now)
        watch = self._holder_watch
        if watch is not None:
            lease = election.lease
            if lease.role is Role.LEADER and lease.term is not None:
                watch.lead(lease.term)
            else:
                watch.follow(election.watched_term)
        return min(turn.delay, subscription.tick(now))

    def _holder_gone(self, term: int) -> None:
        """The holder watch's report (its own thread): handled on the engine thread."""
        self._commands.put(_HolderGone(term))

    def _close_holder_watch(self) -> None:
        watch, self._holder_watch = self._holder_watch, None
        if watch is not None:
            watch.close()

    def _handle(
        self, election: Election, subscription: SubscriptionSupervisor, command: object
    ) -> None:
        now = self._clock()
        if isinstance(command, FeedItem | FeedLost):
            subscription.deliver(command, now)
        elif isinstance(command, _Elect):
            election.request_leader(command.member_id, now)
        elif isinstance(command, _HolderGone):
            election.holder_gone(command.term, now)


def _timing(timing: Timing | None, **seconds: float | None) -> Timing:
    """``timing``, or one built from the keyword timings given (Timing's defaults for the rest)."""
    given = {key: value for key, value in seconds.items() if value is not None}
    if timing is None:
        return Timing(**given)
    if given:
        raise ConfigurationError(
            f"pass timing= or the keyword timings, not both (got timing and {', '.join(given)})"
        )
    if not isinstance(timing, Timing):
        raise ConfigurationError(f"timing must be a Timing, got {timing!r}")
    return timing
