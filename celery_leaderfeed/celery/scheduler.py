"""``LeaderScheduler``: Celery beat that sends periodic tasks only while it leads.

Where the leadership comes from:

* ``celery worker -B`` on a worker running the LeaderFeedStep: beat runs in a child process and
  follows its worker's lease (read from shared memory), so one node per cluster both runs
  ``@leader_only`` tasks and sends periodic tasks. When the worker dies, the orphaned child stops
  sending and exits.
* standalone ``celery beat -S leaderfeed`` (or ``-B`` without the step): its own
  :class:`~celery_leaderfeed.LeaderFeed` in the election ``leaderfeed_beat_name``.

The two are separate elections with separate schedule state, so an app must use one kind; a
leading embedded beat reports a live standalone one (:mod:`~celery_leaderfeed.celery.rival_beat`).

Why no run is sent twice or lost: every entry's state (the nominal due time of the last run
handled, see :mod:`~celery_leaderfeed.celery.occurrences`) lives in the store. Before a send,
the leader
*claims* the occurrence by advancing that state with ``write_entry``: a compare-and-set on the
state it read, fenced atomically on the leader record's term and token. A leader whose term has
ended - a paused process that wakes up, an orphaned beat child - cannot claim, and two
schedulers racing for one occurrence cannot both win. A new leader reads the state only after
its term began, so it continues exactly where the old one stopped. If publishing fails after
the claim, the state is put back so the run is retried, not lost.

``tick()`` never waits on the election: a follower sleeps a quarter of the heartbeat interval,
so it takes over within that of its election; a leader wakes for the next due entry (at least
every heartbeat interval). Store calls are bounded by the operation timeout, and a tick starts
no new one once it has spent that long.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from ._extras import celery_extra

with celery_extra():
    import click
    from celery.beat import BeatLazyFunc, Scheduler

from ..backends.base import Backend, Refusal
from ..engine.election import Role
from ..engine.feed import LeaderFeed
from ..engine.retry import Backoff, FaultLog, refused_pace, report_interval
from ..errors import BackendUnavailable, ConfigurationError
from ..timing import Timing
from ..urls import redact_url
from .occurrences import (
    MAX_LISTED,
    CorruptState,
    EntryState,
    Step,
    beyond_schedule,
    format_due,
    next_due,
    occurrence_id,
    pending,
    plan,
    send_headers,
)
from .rival_beat import RivalBeatWatch
from .settings import LeaderfeedSettings, resolve_settings, unknown_settings
from .shared_lease import SharedView

__all__ = [
    "Authority",
    "BeatConfigurationError",
    "LeaderScheduler",
    "Leadership",
    "OwnElection",
    "WorkerElection",
]

logger = logging.getLogger("celery_leaderfeed.beat")

_TERMINATION_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class BeatConfigurationError(ConfigurationError, click.ClickException):
    """A bad leaderfeed setting, found while ``celery beat`` prints its banner.

    Also a ``click.ClickException``, so ``celery beat`` exits with one ``Error: ...`` line and
    status 1, as ``celery worker`` does.
    """

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, f"leaderfeed: {message}")


@dataclass(frozen=True, slots=True)
class Authority:
    """The right to claim occurrences: a term and token of the leader record, until a deadline."""

    term: int
    token: str
    #: Monotonic times between which this leadership may be used.
    valid_from: float
    deadline: float
    #: Who sends (the ``leaderfeed_sender`` header).
    member_id: str

    def valid(self, now: float) -> bool:
        return self.valid_from <= now < self.deadline


class Leadership(Protocol):
    """Where a scheduler's leadership comes from."""

    #: The election whose leader record fences the schedule state.
    election: str

    def start(self) -> None: ...

    def authority(self) -> Authority | None:
        """The current leadership, or None while following."""

    def close(self) -> None: ...


class OwnElection:
    """Standalone beat: its own LeaderFeed (resigns on close so another beat takes over)."""

    def __init__(self, feed: LeaderFeed) -> None:
        self.feed = feed
        self.election = feed.name

    def start(self) -> None:
        self.feed.start(retry=True)

    def authority(self) -> Authority | None:
        lease = self.feed.lease
        if lease.role is not Role.LEADER or lease.term is None or lease.token is None:
            return None
        return Authority(lease.term, lease.token, lease.valid_from, lease.deadline, self.feed.id)

    def close(self) -> None:
        self.feed.stop()


class WorkerElection:
    """Embedded beat of a worker with the LeaderFeedStep: follows the worker's shared lease."""

    def __init__(self, election: str, read: Callable[[], SharedView | None]) -> None:
        self.election = election
        self._read = read

    def start(self) -> None:
        pass

    def authority(self) -> Authority | None:
        view = self._read()
        if view is None or view.role is not Role.LEADER or view.term is None or not view.token:
            return None
        return Authority(view.term, view.token, view.valid_from, view.deadline, view.member_id)

    def close(self) -> None:
        pass


def _worker_lease_reader(app: Any) -> Callable[[], SharedView | None] | None:
    """``current_lease(app)`` of the worker step, if this process can see a worker's lease."""
    try:
        from .bootstep import current_lease  # noqa: PLC0415 - needs the worker side of Celery
    except ImportError:
        return None
    if current_lease(app) is None:
        return None
    return lambda: current_lease(app)


def _in_embedded_beat() -> bool:
    """True in the child process that ``celery worker -B`` forks for beat."""
    from billiard.process import current_process  # noqa: PLC0415

    return bool(current_process().name == "Beat")


@contextlib.contextmanager
def _termination_deferred() -> Iterator[None]:
    """Hold SIGTERM/SIGINT until the block ends (main thread only; elsewhere a no-op).

    Wrapped around claim + publish, so a shutdown signal cannot land between the two and lose a
    claimed run. Threads started inside the block inherit the blocked mask, which keeps the
    main thread the only one that takes these signals (a handler would otherwise still run in
    the main thread as soon as another thread took the signal).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _beyond(entry: Any, last_due: datetime, now: datetime) -> bool:
    """:func:`beyond_schedule` for ``entry``; False for a broken schedule (``pending`` in
    ``_run_entry`` reports that)."""
    try:
        return beyond_schedule(entry.schedule, last_due, now)
    except Exception:  # noqa: BLE001 - reported where the next run is computed
        return False


def _describe_timing(settings: LeaderfeedSettings) -> str:
    timing = settings.timing
    return (
        f"heartbeat {timing.heartbeat_interval:g} s, election timeout "
        f"{timing.election_timeout_min:g}-{timing.election_timeout_max:g} s"
    )


def _warn_about_settings(app: Any, settings: LeaderfeedSettings) -> None:
    """Once, as a beat that elects on its own starts: keys no setting reads, a private store."""
    for warning in unknown_settings(app):
        logger.warning("leaderfeed: %s", warning)
    if not settings.shared_across_processes:
        logger.warning(
            "leaderfeed: leaderfeed_backend %s keeps this beat's election inside its process: "
            "another beat cannot see it and would send every run too (fine for one beat or "
            "tests)",
            redact_url(settings.backend_url),
        )


class LeaderScheduler(Scheduler):  # type: ignore[misc]  # celery is untyped
    """Beat scheduler that sends due entries only while leader (``-S leaderfeed``).

    Extra keyword arguments, for tests and embedding: ``leadership`` (a :class:`Leadership`
    instead of the one chosen from the environment), ``clock`` (UTC now) and ``monotonic``.
    """

    def __init__(
        self,
        app: Any,
        *args: Any,
        leadership: Leadership | None = None,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        lazy: bool = False,
        **kwargs: Any,
    ) -> None:
        self._leadership = leadership
        self._clock = clock
        self._monotonic = monotonic
        self._settings: LeaderfeedSettings | None = None
        self._store: Backend | None = None
        self._store_connected = False
        self._rival: RivalBeatWatch | None = None
        self._parent_pid: int | None = None
        self._closed = False
        #: (term, token) the cached states were read under; None: read again before acting.
        self._held: tuple[int, str] | None = None
        self._states: dict[str, str] = {}
        self._leading = False
        self._broken_entries: set[str] = set()
        #: Pacing and logging of failed schedule-state calls and refused claims (see _pacing).
        self._retry: Backoff | None = None
        self._faults: FaultLog | None = None
        self._send_faults: FaultLog | None = None
        #: Why a send failed in this tick (its claim was put back): the tick backs off.
        self._send_error: Exception | None = None
        #: Claims refused since the last one that succeeded.
        self._refusals = 0
        #: (term, token) -> the store's clock minus ours, measured once per term when needed.
        self._clock_offset: tuple[tuple[int, str] | None, timedelta | None] | None = None
        self._clock_behind_warned: set[str] = set()
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # -- set-up and tear-down ------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Build the schedule, then join the election (never called for ``lazy`` instances).

        A bad setting ends beat with one CRITICAL log line and ``SystemExit(1)`` (the
        :class:`ConfigurationError` is its ``__cause__``): Celery's beat logs any exception
        raised here with its traceback, and prints it again word by word through its redirected
        stderr. ``celery beat`` without ``--quiet`` stops earlier, at the banner (:attr:`info`).
        """
        super().setup_schedule()
        embedded = _in_embedded_beat()
        try:
            settings = self._settings = resolve_settings(self.app)
            if self._leadership is None:
                self._leadership = self._choose_leadership(settings)
            self._store = settings.store(self._leadership.election)
        except ConfigurationError as exc:
            logger.critical("leaderfeed: %s", exc)
            raise SystemExit(1) from exc
        if embedded or isinstance(self._leadership, WorkerElection):
            self._parent_pid = os.getppid()
        if isinstance(self._leadership, WorkerElection):
            self._rival = RivalBeatWatch(
                settings.store(settings.beat_name), every=settings.timing.election_timeout_max
            )
        with _termination_deferred():  # the feed's threads inherit the blocked mask
            self._leadership.start()
        logger.info(
            "beat: leaderfeed scheduler in election %r on %s (%s; %s)",
            self._leadership.election,
            self._store.display_url,
            "following the worker" if isinstance(self._leadership, WorkerElection) else "own",
            _describe_timing(settings),
        )

    def _choose_leadership(self, settings: LeaderfeedSettings) -> Leadership:
        read = _worker_lease_reader(self.app)
        if read is not None:
            return WorkerElection(settings.name, read)  # its worker warned about the settings
        _warn_about_settings(self.app, settings)
        feed = LeaderFeed(
            settings.backend_url,
            name=settings.beat_name,
            member_id=f"beat@{socket.gethostname()}:{os.getpid()}",
            heartbeat_interval=settings.timing.heartbeat_interval,
            election_timeout_min=settings.timing.election_timeout_min,
            election_timeout_max=settings.timing.election_timeout_max,
            operation_timeout=settings.timing.operation_timeout,
            options=settings.backend_options,
        )
        return OwnElection(feed)

    def close(self) -> None:
        """Resign (standalone) and release connections; idempotent, safe in a signal handler."""
        if self._closed:
            return
        self._closed = True
        self._held = None
        try:
            if self._leadership is not None:
                self._leadership.close()
        except Exception:
            logger.exception("beat: error while leaving the election")
        finally:
            if self._store is not None:
                self._store.close()
            if self._rival is not None:
                self._rival.close()
            try:
                super().close()  # releases the broker connection
            except Exception:
                logger.exception("beat: error while releasing the broker connection")

    def sync(self) -> None:
        """Nothing to do: each claim already wrote its entry's state to the store."""

    @property
    def info(self) -> str:
        try:
            settings = self._settings or resolve_settings(self.app)
        except ConfigurationError as exc:
            # Beat prints its banner before its logging starts: stop here, in one line.
            raise BeatConfigurationError(str(exc)) from exc
        return (
            f"    . leaderfeed -> {redact_url(settings.backend_url)} "
            f"({_describe_timing(settings)}, misfire policy {settings.misfire_policy})"
        )

    # -- the loop ------------------------------------------------------------------------------

    @property
    def _heartbeat(self) -> float:
        settings = self._settings
        return settings.timing.heartbeat_interval if settings is not None else 1.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due if leader; return the seconds to sleep before the next tick."""
        follower_sleep = min(self._heartbeat / 4, float(self.max_interval))
        if self._closed or self._leadership is None:
            return follower_sleep
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            logger.warning(
                "beat: worker process %d is gone; this beat stops sending and exits",
                self._parent_pid,
            )
            self.close()
            raise SystemExit(0)
        authority = self._leadership.authority()
        if authority is None or not authority.valid(self._monotonic()):
            self._follow()
            return follower_sleep
        retry, faults = self._pacing()
        try:
            wake = self._lead(authority)
            if self._refusals > 1:
                return self._refused_again(authority)
            if self._send_error is not None:
                error, self._send_error = self._send_error, None
                return min(retry.next(error), float(self.max_interval))
            if self._rival is not None:
                self._rival.look(self._monotonic())
        except BackendUnavailable as exc:
            self._held = None
            faults.failed(
                self._monotonic(), "the schedule state", exc, note="; not sending until it works"
            )
            return min(retry.next(exc), float(self.max_interval))
        if self._refusals == 0:
            retry.reset()
            faults.recovered(self._monotonic(), "the schedule state")
        return max(0.0, min(wake, self._heartbeat, float(self.max_interval)))

    def _pacing(self) -> tuple[Backoff, FaultLog]:
        """The backoff and fault log of this scheduler's store calls (built on first use, once
        the settings are known)."""
        if self._retry is None or self._faults is None:
            timing = self._settings.timing if self._settings is not None else Timing()
            self._retry = Backoff(
                random.Random(),
                timing.heartbeat_interval / 4,
                timing.heartbeat_interval,
                refused_cap=refused_pace(timing),
            )
            self._faults = FaultLog(logger, "beat", report_interval(timing))
            self._send_faults = FaultLog(logger, "beat", report_interval(timing))
        return self._retry, self._faults

    def _refused_again(self, authority: Authority) -> float:
        """Seconds to wait after claims were refused again under one term, with the state read
        afresh in between: a lost race would have ended there, so back off and say why."""
        retry, faults = self._pacing()
        error = self._why_refused(authority)
        faults.failed(self._monotonic(), "claiming schedule state", error, note="; retrying")
        return min(retry.next(error), float(self.max_interval))

    def _why_refused(self, authority: Authority) -> BackendUnavailable:
        """What the leader record says about our refused claims."""
        store = self._store
        assert store is not None
        try:
            record = store.read().record
        except BackendUnavailable as exc:
            return exc
        if record is not None and (record.term, record.token) == (authority.term, authority.token):
            return BackendUnavailable(
                f"claims under term {authority.term} keep being refused though the store shows "
                f"that term: another scheduler writes the same schedule state under it"
            )
        shown = "no leader record" if record is None else f"term {record.term} of {record.holder}"
        return store.refused(
            Refusal(
                f"the store shows {shown}, not this leader's term {authority.term}, so every "
                f"claim on the schedule state is refused",
                "give beat the same store as its election, in every process: the same "
                "leaderfeed_backend and leaderfeed_backend_options (key_prefix...)",
            ),
            f"election {store.name!r}",
        )

    def _follow(self) -> None:
        self._held = None
        self._refusals = 0
        if self._leading:
            self._leading = False
            logger.info("beat: no longer leading; not sending periodic tasks")

    def _lead(self, authority: Authority) -> float:
        """Handle every entry as leader; the seconds until the next one is due."""
        assert self._settings is not None
        budget_end = self._monotonic() + self._settings.timing.timeout
        held = (authority.term, authority.token)
        if self._held != held:
            self._states = self._read_states()
            self._held = held
        if not self._leading:
            self._leading = True
            logger.info("beat: leading in term %d; sending periodic tasks", authority.term)
        wake = self._heartbeat
        for entry in list(self.schedule.values()):
            if self._monotonic() >= budget_end:
                return 0.0  # spent the store budget: go on with the rest at the next tick
            due = self._run_entry(entry, authority, budget_end)
            if not self._holding():
                return 0.0  # a claim was refused: read again (or follow) at the next tick
            if due is not None:
                wake = min(wake, (due - self._clock()).total_seconds())
        return wake

    def _holding(self) -> bool:
        return self._held is not None

    def _read_states(self) -> dict[str, str]:
        """The stored states, read after our term began (so they include every older claim)."""
        store = self._store
        assert store is not None
        if not self._store_connected:
            store.connect()
            self._store_connected = True
        return store.read_entries()

    # -- one entry -------------------------------------------------------------------------------

    def _run_entry(self, entry: Any, authority: Authority, budget_end: float) -> datetime | None:
        """Claim and send what of ``entry`` is due; the next due time (None: unknown)."""
        assert self._settings is not None
        name: str = entry.name
        stored = self._states.get(name)
        state = self._decode(name, stored)
        now = self._clock()
        if state is None or self._from_the_future(entry, state, now):
            term = authority.term
            state = EntryState.anchored(now, term) if state is None else state.rebased(now, term)
            if not self._may_act(authority):
                return None
            if not self._claim(name, stored, state.encode(), authority):
                return None
        raw = self._states[name]
        try:
            found = pending(
                entry.schedule,
                state.last_due,
                now,
                keep=max(MAX_LISTED, self._settings.catch_up_limit) + 1,
            )
            steps = (
                []
                if found is None
                else plan(
                    found,
                    state.last_due,
                    self._settings.misfire_policy,
                    self._settings.catch_up_limit,
                )
            )
        except Exception:
            if name not in self._broken_entries:
                self._broken_entries.add(name)
                logger.exception("beat: cannot compute the next run of %r; skipping it", name)
            return None
        for step in steps:
            if self._monotonic() >= budget_end or not self._may_act(authority):
                return None
            new = state.after(step, term=authority.term, sent_at=time.time())
            if not self._handle_step(entry, step, raw, new, authority):
                return None
            state, raw = new, new.encode()
        try:
            return next_due(entry.schedule, state.last_due)
        except Exception:  # noqa: BLE001 - already reported by pending() above
            return None

    def _decode(self, name: str, raw: str | None) -> EntryState | None:
        if raw is None:
            return None
        try:
            return EntryState.decode(raw)
        except CorruptState as exc:
            logger.warning("beat: stored state of %r is corrupt (%s); rebuilding it", name, exc)
            return None

    def _from_the_future(self, entry: Any, state: EntryState, now: datetime) -> bool:
        """Whether ``state`` is due further ahead than ``entry``'s schedule explains, by our
        clock and by the store's: a leader whose clock ran ahead wrote it, and trusting it would
        silence the entry until our clock caught up. When only our clock says so, the fault is
        ours: the entry waits, with a warning."""
        name: str = entry.name
        if not _beyond(entry, state.last_due, now):
            return False
        store_now = self._store_now(now)
        if store_now is not None and not _beyond(entry, state.last_due, store_now):
            if name not in self._clock_behind_warned:
                self._clock_behind_warned.add(name)
                logger.warning(
                    "beat: this scheduler's clock is %.1f s behind the store's, so %r waits "
                    "for its stored due time %s: set this host's clock right (NTP)",
                    (store_now - now).total_seconds(),
                    name,
                    format_due(state.last_due),
                )
            return False
        logger.warning(
            "beat: stored state of %r says its last run was due at %s, %.1f s ahead of %s "
            "clock and past the schedule's next due time: written by a leader whose clock runs "
            "ahead? Rebuilding it from now",
            name,
            format_due(state.last_due),
            (state.last_due - (store_now or now)).total_seconds(),
            "this scheduler's" if store_now is None else "the store's",
        )
        return True

    def _store_now(self, now: datetime) -> datetime | None:
        """``now`` by the store's clock (None: the backend does not tell); its offset from ours
        is measured with one read, once per term."""
        if self._clock_offset is None or self._clock_offset[0] != self._held:
            store = self._store
            assert store is not None
            store_time = store.read().store_time
            offset = (
                None
                if store_time is None or not math.isfinite(store_time)
                else datetime.fromtimestamp(store_time, timezone.utc) - self._clock()
            )
            self._clock_offset = (self._held, offset)
        offset = self._clock_offset[1]
        return None if offset is None else now + offset

    def _may_act(self, authority: Authority) -> bool:
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            return False
        assert self._leadership is not None
        current = self._leadership.authority()
        return (
            current is not None
            and (current.term, current.token) == (authority.term, authority.token)
            and current.valid(self._monotonic())
        )

    def _handle_step(
        self, entry: Any, step: Step, raw: str, new: EntryState, authority: Authority
    ) -> bool:
        """Claim ``step`` then send it; put the claim back if the send fails."""
        name: str = entry.name
        new_raw = new.encode()
        if step.send is not None:
            self.producer  # noqa: B018 - connect to the broker before claiming, not after
        with _termination_deferred():
            if not self._claim(name, raw, new_raw, authority):
                return False
            error = None
            if step.send is not None:
                assert new.sent_at is not None
                headers = send_headers(
                    name, step, term=authority.term, sender=authority.member_id, sent_at=new.sent_at
                )
                error = self._publish(entry, headers)
            if error is not None:
                self._release(name, new_raw, raw, authority, step, error)
                return False
        if step.send is not None and self._send_faults is not None:
            self._send_faults.recovered(self._monotonic(), "sending periodic tasks")
        self._report(entry, step, new, authority)
        return True

    def _claim(self, name: str, expected: str | None, new: str, authority: Authority) -> bool:
        store = self._store
        assert store is not None
        if store.write_entry(authority.term, authority.token, name, expected, new):
            self._states[name] = new
            self._refusals = 0
            return True
        self._refusals += 1
        if self._refusals == 1:  # later ones in a row are reported by _refused_again
            logger.info(
                "beat: claim on %r refused (term %d has ended or the state changed)",
                name,
                authority.term,
            )
        self._held = None
        return False

    def _release(
        self,
        name: str,
        claimed: str,
        previous: str,
        authority: Authority,
        step: Step,
        error: Exception,
    ) -> None:
        """Put a claimed-but-unsent occurrence back so it is sent later (by us or a successor);
        the tick then backs off, and a lasting failure is reported at a bounded rate."""
        assert step.send is not None
        occurrence = occurrence_id(name, step.send)
        try:
            released = self._claim(name, claimed, previous, authority)
        except BackendUnavailable:
            released = False
        if not released:
            logger.error(
                "beat: sending %s failed (%s) and its claim could not be undone", occurrence, error
            )
            return
        self._send_error = error
        self._pacing()
        assert self._send_faults is not None
        self._send_faults.failed(
            self._monotonic(), f"sending {occurrence}", error, note="; it will be retried"
        )

    def _publish(self, entry: Any, headers: dict[str, Any]) -> Exception | None:
        """Send ``entry`` with ``headers`` the way Celery's scheduler does; the error, if any."""
        options = dict(entry.options or {})
        options["headers"] = {**(options.get("headers") or {}), "celery_beat_task": True, **headers}
        args = [arg() if isinstance(arg, BeatLazyFunc) else arg for arg in entry.args or ()]
        kwargs = {
            key: value() if isinstance(value, BeatLazyFunc) else value
            for key, value in (entry.kwargs or {}).items()
        }
        try:
            task = self.app.tasks.get(entry.task)
            if task is not None:
                task.apply_async(args, kwargs, producer=self.producer, **options)
            else:
                self.send_task(entry.task, args, kwargs, producer=self.producer, **options)
        except Exception as exc:  # noqa: BLE001 - reported by _release, with its traceback
            return exc
        return None

    def _report(self, entry: Any, step: Step, new: EntryState, authority: Authority) -> None:
        name: str = entry.name
        if step.skipped:
            assert step.skipped_from is not None
            logger.warning(
                "beat: %d run(s) of %r missed during a failover, due from %s, recorded as "
                "skipped (misfire policy %s)",
                step.skipped,
                name,
                format_due(step.skipped_from),
                self._settings.misfire_policy if self._settings else "?",
            )
        if step.send is None:
            return
        entry.last_run_at = self._clock()
        entry.total_run_count = new.runs
        if step.coalesced_count:
            logger.warning(
                "beat: sending %s (term %d) for itself and %d missed run(s)",
                occurrence_id(name, step.send),
                authority.term,
                step.coalesced_count,
            )
        else:
            logger.info(
                "beat: sending %s (%s, term %d)",
                occurrence_id(name, step.send),
                entry.task,
                authority.term,
            )
