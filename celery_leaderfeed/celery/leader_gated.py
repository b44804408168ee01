"""Leader gating for any Celery beat scheduler: ``leader_gated(SchedulerClass)`` and the mixin
behind it, :class:`LeaderGatedMixin`.

The composition rule: the *inner* scheduler (Celery's in-memory ``Scheduler``,
django-celery-beat's ``DatabaseScheduler``, RedBeat's ``RedBeatScheduler``, your own) supplies
the entries and their gates - enabled, start time, expiry, one-off - and keeps its metadata;
the election decides who sends; the :class:`~celery_leaderfeed.celery.ledger.OccurrenceLedger`
names and claims each run. The inner scheduler's ``tick`` and ``reserve`` never run: they write
``last_run_at = now`` before sending, unfenced, so two leaders would name a run differently.
Instead the leader plans nominal occurrences itself, claims each one, sends it, then records it
into the inner metadata with its nominal due time (:meth:`LeaderGatedMixin.record_run`).
Followers write nothing, not even the inner scheduler's start-up entries: its
``setup_schedule`` runs on the leader, before its first term's first tick.

Hooks a composed scheduler overrides (each documented below): :meth:`~LeaderGatedMixin.start_term`,
:meth:`~LeaderGatedMixin.leader_entries`, :meth:`~LeaderGatedMixin.entry_gate`,
:meth:`~LeaderGatedMixin.entry_anchor`, :meth:`~LeaderGatedMixin.record_run`. A hook that cannot
reach the inner scheduler's own store raises :class:`ScheduleSourceUnavailable`: the leader
backs off and retries, sending nothing it could not claim.

Where the leadership comes from:

* ``celery worker -B`` on a worker running the LeaderFeedStep: beat runs in a child process and
  follows its worker's lease (read from shared memory), so one node per cluster both runs
  ``@leader_only`` tasks and sends periodic tasks. When the worker dies, the orphaned child stops
  sending and exits.
* standalone ``celery beat -S leaderfeed`` (or ``-B`` without the step): its own
  :class:`~celery_leaderfeed.LeaderFeed` in the election ``leaderfeed_beat_name``.

The two are separate elections with separate schedule state, so an app must use one kind; a
leading embedded beat reports a live standalone one (:mod:`~celery_leaderfeed.celery.rival_beat`).

Why no run is lost or run twice - claim, publish, confirm: before a send, the leader *claims*
the occurrence in the ledger, a compare-and-set on the entry's stored state fenced on the
leader record's term and token, which records the run as *pending* with its deterministic task
id; a leader whose term has ended - a paused process that wakes up, an orphaned beat child -
cannot claim. It then publishes the run under that task id, with a fresh
``leaderfeed_publish_id`` per attempt, and a second fenced write *confirms* it (clears
pending). A publish that fails leaves the run pending: this leader publishes it again at its
next tick, after backing off. A leader that dies between claim and confirm leaves it pending
too: the next leader, before sending anything new of that entry, publishes it again under the
same task id with ``leaderfeed_republished=<old term>``, then confirms. So every claimed run is
published at least once; consumers run it at most once (:mod:`~celery_leaderfeed.celery.once`
drops a duplicate publish of a run that already started). What is due comes from
:mod:`~celery_leaderfeed.celery.occurrences`.

:meth:`LeaderGatedMixin.fault_point` is a no-op hook called between claim and publish and
between publish and confirm: the tests' scheduler subclass kills the leader there.

``tick()`` never waits on the election: a follower sleeps a quarter of the heartbeat interval,
so it takes over within that of its election; a leader wakes for the next due entry (at least
every heartbeat interval). Store calls are bounded by the operation timeout, and a tick starts
no new one once it has spent that long.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from ._extras import celery_extra

with celery_extra():
    from celery.beat import BeatLazyFunc, Scheduler
    from celery.schedules import schedule as interval_schedule

from ..engine.election import Lease
from ..engine.retry import Backoff, FaultLog, refused_pace, report_interval
from ..errors import BackendUnavailable, ConfigurationError
from ..timing import Timing
from ..urls import redact_url
from .beat_leadership import Leadership, WorkerElection, choose_leadership, fence
from .ledger import Claim, OccurrenceLedger
from .metrics import record_beat_run
from .occurrences import (
    EntryState,
    PendingPublish,
    PlannedRun,
    ScheduleExhausted,
    format_due,
    next_due,
    occurrence_id,
    parse_occurrence_id,
    pending,
    plan_due,
    send_headers,
)
from .once import ELECTION_HEADER, PUBLISH_ID_HEADER, REPUBLISHED_HEADER
from .rival_beat import RivalBeatWatch
from .settings import LeaderfeedSettings, StartupConfigurationError, resolve_settings

__all__ = ["Gate", "LeaderGatedMixin", "ScheduleSourceUnavailable", "leader_gated"]

logger = logging.getLogger("celery_leaderfeed.beat")

_TERMINATION_SIGNALS = {signal.SIGTERM, signal.SIGINT}


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


class _Pacing:
    """How a leading beat backs off from what keeps failing, and reports it at a bounded rate."""

    def __init__(self, timing: Timing) -> None:
        #: The tick's delay after a store fault, refused claims or a failed send.
        self.retry = Backoff(
            random.Random(),
            timing.heartbeat_interval / 4,
            timing.heartbeat_interval,
            refused_cap=refused_pace(timing),
        )
        self.store = FaultLog(logger, "beat", report_interval(timing))
        #: The inner scheduler's own store (a composed scheduler's database).
        self.source = FaultLog(logger, "beat", report_interval(timing))
        self.sends = FaultLog(logger, "beat", report_interval(timing))


def _describe_timing(settings: LeaderfeedSettings) -> str:
    timing = settings.timing
    return (
        f"heartbeat {timing.heartbeat_interval:g} s, election timeout "
        f"{timing.election_timeout_min:g}-{timing.election_timeout_max:g} s"
    )


class ScheduleSourceUnavailable(BackendUnavailable):
    """The inner scheduler's own store (a database, a Redis) did not answer: the leader backs
    off and retries, and sends nothing meanwhile that it has not claimed."""


@dataclass(frozen=True, slots=True)
class Gate:
    """Whether an entry may run now, as its inner scheduler decides (see
    :meth:`LeaderGatedMixin.entry_gate`)."""

    open: bool = True
    #: Runs due after this moment are not sent (an entry that expires).
    until: datetime | None = None
    #: A closed gate may open at this moment (a start time): the leader wakes for it.
    reopens: datetime | None = None
    #: Why it is closed, for the debug log.
    reason: str = ""


OPEN = Gate()

#: A new entry of a walked schedule (crontab, solar...) is never anchored further back than
#: this: its first run then coalesces at most a day of slots.
_MAX_ANCHOR_AGE = timedelta(days=1)


# A Scheduler itself, so that it composes with any subclass: in ``(LeaderGatedMixin, Inner)``
# Python's method order puts Inner (and its own bases) between the mixin and Scheduler.
class LeaderGatedMixin(Scheduler):  # type: ignore[misc]  # celery is untyped
    """Sends the inner scheduler's due entries only while leader; see the module docstring.

    Put it first: ``class MyScheduler(LeaderGatedMixin, SomeScheduler)``, or use
    :func:`leader_gated`. Extra keyword arguments, for tests and embedding: ``leadership`` (a
    :class:`Leadership` instead of the one chosen from the environment), ``clock`` (UTC now)
    and ``monotonic``.
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
        #: The schedule state in the store; None until set up (a lazy instance never is).
        self._ledger: OccurrenceLedger | None = None
        self._rival: RivalBeatWatch | None = None
        self._parent_pid: int | None = None
        self._closed = False
        self._leading = False
        self._broken_entries: set[str] = set()
        #: Why a send failed in this tick (its run stays pending): the tick backs off.
        self._send_error: Exception | None = None
        self._inner_set_up = False
        super().__init__(app, *args, lazy=lazy, **kwargs)

    # RedBeat's module-level beat_init handler takes a blocking Redis lock named by
    # ``scheduler.lock_key``; the election replaces that lock, so there never is a key (and
    # the handler finds the attribute on every leader-gated scheduler, not only on RedBeat's).
    @property
    def lock_key(self) -> None:
        return None

    @lock_key.setter
    def lock_key(self, value: object) -> None:
        pass

    # -- what an inner scheduler supplies (override in a composed scheduler) -------------------

    def start_term(self) -> None:
        """Called on the leader before it handles entries in a new term: (re)read the inner
        schedule. Here: the inner scheduler's own ``setup_schedule`` once, on the first term, so
        followers never write its start-up entries. Raise :class:`ScheduleSourceUnavailable`
        when its store cannot be reached: it is called again at the next tick."""
        if not self._inner_set_up:
            super().setup_schedule()
            self._inner_set_up = True

    def leader_entries(self) -> Iterable[Any]:
        """Every entry the leader should consider now (due or not)."""
        return list(self.schedule.values())

    def entry_gate(self, entry: Any, now: datetime, state: EntryState) -> Gate:
        """Whether ``entry`` may run at ``now`` (its stored ``state`` for reference): the inner
        scheduler's enabled flag, start time, expiry, one-off rule. Called on the leader only,
        so a gate may also write the inner metadata (disable an expired entry)."""
        return OPEN

    def entry_anchor(self, entry: Any, now: datetime) -> datetime:
        """Where a new entry's schedule starts (its first run is the first due time after it).
        Here: ``now``, as Celery's own scheduler starts an interval at beat start."""
        return now

    def entry_changed_at(self, entry: Any) -> datetime | None:
        """When ``entry``'s definition was last edited (None: not known). Runs that fell due
        before an edit belong to the old definition: all but the latest of them are recorded
        as skipped, not sent as missed runs (an entry re-enabled after a day, or whose interval
        went from an hour to a minute, sends one run, not a backlog)."""
        return None

    def record_run(self, entry: Any, run: PlannedRun, state: EntryState) -> None:
        """Write a claimed, sent run into the inner scheduler's metadata, with its nominal due
        time (never when it was sent). Called on the leader only, after the send; a failure
        here is logged and does not undo the send."""
        assert run.send is not None
        entry.last_run_at = run.send
        entry.total_run_count = state.runs

    def fault_point(self, where: str, occurrence: str) -> None:
        """Called by the leader right after claiming ``occurrence`` (``where="claimed"``) and
        right after publishing it (``"published"``), before confirming. A no-op: a test's
        subclass crashes the leader here (never override it in production code)."""

    # -- set-up and tear-down ------------------------------------------------------------------

    def setup_schedule(self) -> None:
        """Build the schedule, then join the election (never called for ``lazy`` instances).

        A bad setting ends beat with one CRITICAL log line and ``SystemExit(1)`` (the
        :class:`ConfigurationError` is its ``__cause__``): Celery's beat logs any exception
        raised here with its traceback, and prints it again word by word through its redirected
        stderr. ``celery beat`` without ``--quiet`` stops earlier, at the banner (:attr:`info`).
        The inner scheduler's own set-up waits for the first term (:meth:`start_term`).
        """
        embedded = _in_embedded_beat()
        try:
            settings = self._settings = resolve_settings(self.app)
            if self._leadership is None:
                self._leadership = choose_leadership(self.app, settings)
            store = settings.store(self._leadership.election)
        except ConfigurationError as exc:
            logger.critical("leaderfeed: %s", exc)
            raise SystemExit(1) from exc
        self._ledger = OccurrenceLedger(store, self._clock)
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
            store.display_url,
            "following the worker" if isinstance(self._leadership, WorkerElection) else "own",
            _describe_timing(settings),
        )

    def close(self) -> None:
        """Resign (standalone) and release connections; idempotent, safe in a signal handler."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._leadership is not None:
                self._leadership.close()
        except Exception:
            logger.exception("beat: error while leaving the election")
        finally:
            if self._ledger is not None:
                self._ledger.close()
            if self._rival is not None:
                self._rival.close()
            try:
                super().close()  # releases the broker connection
            except Exception:
                logger.exception("beat: error while releasing the broker connection")

    def sync(self) -> None:
        """The inner scheduler's sync, on the leader only: a follower's copy of the inner
        metadata is stale (each claim already wrote the entry's state to the store)."""
        if self._leading and not self._closed:
            super().sync()

    @property
    def info(self) -> str:
        try:
            settings = self._settings or resolve_settings(self.app)
        except ConfigurationError as exc:
            # Beat prints its banner before its logging starts: stop here, in one line.
            raise StartupConfigurationError(str(exc)) from exc
        return (
            f"    . leaderfeed -> {redact_url(settings.backend_url)} "
            f"({_describe_timing(settings)}, misfire policy {settings.misfire_policy})"
        )

    # -- the loop ------------------------------------------------------------------------------

    @property
    def _heartbeat(self) -> float:
        settings = self._settings
        return settings.timing.heartbeat_interval if settings is not None else 1.0

    @functools.cached_property
    def _pacing(self) -> _Pacing:
        """Built on first use, by a leading tick: once the settings are known."""
        return _Pacing(self._settings.timing if self._settings is not None else Timing())

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send what is due if leader; return the seconds to sleep before the next tick."""
        follower_sleep = min(self._heartbeat / 4, float(self.max_interval))
        ledger, leadership = self._ledger, self._leadership
        if self._closed or ledger is None or leadership is None:
            return follower_sleep
        if self._orphaned():
            logger.warning(
                "beat: worker process %d is gone; this beat stops sending and exits",
                self._parent_pid,
            )
            self.close()
            raise SystemExit(0)
        lease = leadership.lease()
        if lease is None or not lease.fenced(self._monotonic()):
            self._follow(ledger)
            return follower_sleep
        pacing = self._pacing
        try:
            wake = self._lead(ledger, lease)
            if ledger.refusals > 1:
                # Refused again, with the states read afresh in between: a lost race would
                # have ended there, so back off and say why.
                why = ledger.why_refused(*fence(lease))
                pacing.store.failed(
                    self._monotonic(), "claiming schedule state", why, note="; retrying"
                )
                return self._back_off(why)
            if self._send_error is not None:
                error, self._send_error = self._send_error, None
                return self._back_off(error)
            if self._rival is not None:
                self._rival.look(self._monotonic())
        except ScheduleSourceUnavailable as exc:
            note = "; not sending until it works"
            pacing.source.failed(self._monotonic(), "reading the schedule", exc, note=note)
            return self._back_off(exc)
        except BackendUnavailable as exc:
            note = "; not sending until it works"
            pacing.store.failed(self._monotonic(), "the schedule state", exc, note=note)
            return self._back_off(exc)
        pacing.source.recovered(self._monotonic(), "reading the schedule")
        if ledger.refusals == 0:
            pacing.retry.reset()
            pacing.store.recovered(self._monotonic(), "the schedule state")
        return max(0.0, min(wake, self._heartbeat, float(self.max_interval)))

    def _back_off(self, error: Exception) -> float:
        return min(self._pacing.retry.next(error), float(self.max_interval))

    def _follow(self, ledger: OccurrenceLedger) -> None:
        ledger.forget()
        if self._leading:
            self._leading = False
            logger.info("beat: no longer leading; not sending periodic tasks")

    def _orphaned(self) -> bool:
        """Whether the worker that forked this embedded beat is gone."""
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def _may_act(self, lease: Lease) -> bool:
        """Whether ``lease`` is still this scheduler's, and may claim now: every claim is
        fenced in the store, so from ``fenced_from`` (see :meth:`Lease.fenced`)."""
        current = self._current(lease)
        return current is not None and current.fenced(self._monotonic())

    def _may_record(self, lease: Lease) -> bool:
        """Whether ``lease`` may write the inner scheduler's metadata now: those writes are
        not fenced, so only once the lease is valid (an old leader has stopped writing)."""
        current = self._current(lease)
        return current is not None and current.valid(self._monotonic())

    def _current(self, lease: Lease) -> Lease | None:
        """The leadership's lease now, if it is still ``lease``'s term."""
        assert self._leadership is not None
        current = None if self._orphaned() else self._leadership.lease()
        if current is None or (current.term, current.token) != (lease.term, lease.token):
            return None
        return current

    def _lead(self, ledger: OccurrenceLedger, lease: Lease) -> float:
        """Handle every entry as leader; the seconds until the next one is due."""
        assert self._settings is not None
        budget_end = self._monotonic() + self._settings.timing.timeout
        ledger.read(*fence(lease))
        if not self._leading:
            self.start_term()  # once it worked: raises while the inner store is down
            self._leading = True
            logger.info("beat: leading in term %d; sending periodic tasks", lease.term)
        wake = self._heartbeat
        for entry in self.leader_entries():
            if self._monotonic() >= budget_end:
                return 0.0  # spent the store budget: go on with the rest at the next tick
            due = self._run_entry(ledger, entry, lease, budget_end)
            if due is Claim.REFUSED:
                return 0.0  # the ledger reads again (or we follow) at the next tick
            if isinstance(due, datetime):
                wake = min(wake, (due - self._clock()).total_seconds())
        return wake

    # -- one entry -------------------------------------------------------------------------------

    def _run_entry(
        self, ledger: OccurrenceLedger, entry: Any, lease: Lease, budget_end: float
    ) -> datetime | Claim | None:
        """Claim and send what of ``entry`` is due: its next due time (None: unknown), or
        ``Claim.REFUSED`` when a claim was refused, which ends this tick's pass."""
        settings = self._settings
        assert settings is not None
        name: str = entry.name
        term, token = fence(lease)
        now = self._clock()
        anchor = self._anchor(entry, now)
        state, rebuilt = ledger.state(name, entry.schedule, now, term=term, anchor=anchor)
        if state.pending is not None:
            # Claimed before and not confirmed: published again before anything new is sent.
            if not self._may_act(lease):
                return None
            finished = self._finish_pending(ledger, entry, state, lease)
            if not isinstance(finished, EntryState):
                return finished
            state = finished
        gate = self.entry_gate(entry, now, state)
        if not gate.open:
            logger.debug("beat: %r does not run now: %s", name, gate.reason or "gate closed")
            return gate.reopens
        if not rebuilt:
            edited = self._past_edit(entry, state, now, term)
            if edited is not None:
                state, rebuilt = edited, True
        if rebuilt:
            if not self._may_act(lease):
                return None
            if ledger.claim(term, token, name, state) is Claim.REFUSED:
                return Claim.REFUSED
        until = now if gate.until is None else min(now, gate.until)
        try:
            policy, limit = settings.misfire_policy, settings.catch_up_limit
            runs = plan_due(entry.schedule, state.last_due, until, policy, limit)
        except ScheduleExhausted:
            return None  # a clocked (one-time) schedule after its run: nothing more to send
        except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the others
            self._report_broken(name, exc)
            return None
        self._broken_entries.discard(name)
        for run in runs:
            if self._monotonic() >= budget_end or not self._may_act(lease):
                return None
            new = state.after(
                run, term=term, sent_at=time.time(), election=ledger.election, entry=name
            )
            sent = self._claim_and_send(ledger, entry, run, new, lease)
            if not isinstance(sent, EntryState):
                return sent
            state = sent
            if run.send is not None and not self.entry_gate(entry, now, state).open:
                return None  # a one-off entry that just ran
        try:
            return next_due(entry.schedule, state.last_due)
        except Exception:  # noqa: BLE001 - reported by plan_due() above, or exhausted
            return None

    def _anchor(self, entry: Any, now: datetime) -> datetime:
        """:meth:`entry_anchor`, never in the future, and for a walked schedule never more
        than a day back (an interval's backlog is computed, a crontab's walked slot by slot)."""
        anchor = min(self.entry_anchor(entry, now), now)
        if type(entry.schedule) is not interval_schedule:
            anchor = max(anchor, now - _MAX_ANCHOR_AGE)
        return anchor

    def _past_edit(
        self, entry: Any, state: EntryState, now: datetime, term: int
    ) -> EntryState | None:
        """``state`` moved past the runs that fell due before ``entry`` was edited but its
        latest one (see :meth:`entry_changed_at`); None when there is nothing to move. An edit
        time ahead of our clock waits for it (the editing host's clock runs ahead)."""
        changed = self.entry_changed_at(entry)
        if changed is None or changed > now or changed <= state.last_due:
            return None
        try:
            found = pending(entry.schedule, state.last_due, changed, keep=2)
        except Exception:  # noqa: BLE001 - reported where the next run is computed
            return None
        if found is None or found.count < 2:
            return None
        logger.info(
            "beat: %r was edited at %s: %d run(s) due before that are not sent",
            entry.name,
            format_due(changed),
            found.count - 1,
        )
        return replace(
            state,
            last_due=found.recent[-2],
            term=term,
            skipped=state.skipped + found.count - 1,
        )

    def _report_broken(self, name: str, exc: Exception) -> None:
        """One warning per entry while it stays broken; the other entries keep running."""
        if name in self._broken_entries:
            return
        self._broken_entries.add(name)
        logger.warning(
            "beat: skipping %r: cannot compute its next run (%s: %s)",
            name,
            type(exc).__name__,
            exc,
        )

    def _claim_and_send(
        self,
        ledger: OccurrenceLedger,
        entry: Any,
        run: PlannedRun,
        new: EntryState,
        lease: Lease,
    ) -> EntryState | Claim | None:
        """Claim ``run`` (``new`` holds it pending), publish it, confirm it: the state now
        stored once done, ``Claim.REFUSED`` if a write was refused, None if the publish failed
        (the run stays pending and is published again at a later tick)."""
        if run.send is not None:
            self.producer  # noqa: B018 - connect to the broker before claiming, not after
        with _termination_deferred():
            if ledger.claim(*fence(lease), entry.name, new) is Claim.REFUSED:
                return Claim.REFUSED
            if new.pending is None:
                self._report(entry, run, new, lease)
                return new
            confirmed = self._publish_and_confirm(ledger, entry, run, new, lease, None)
        if isinstance(confirmed, EntryState):
            self._report(entry, run, confirmed, lease)
        return confirmed

    def _finish_pending(
        self, ledger: OccurrenceLedger, entry: Any, state: EntryState, lease: Lease
    ) -> EntryState | Claim | None:
        """Publish again the run ``state`` holds pending (its publish failed, or its leader died
        before confirming), under the same task id, then confirm it: as
        :meth:`_claim_and_send`. The pending record is first taken over under this term (a
        fenced write, so of two leaders only the current one publishes it)."""
        pending = state.pending
        assert pending is not None
        term, _ = fence(lease)
        run = self._pending_run(entry, pending)
        previous_term = None if pending.term == term else pending.term
        retaken = state.retaken(term)
        self.producer  # noqa: B018 - connect to the broker before claiming, not after
        with _termination_deferred():
            if ledger.claim(*fence(lease), entry.name, retaken) is Claim.REFUSED:
                return Claim.REFUSED
            # A takeover is worth a warning; this leader's own retries are reported, at a
            # bounded rate, by the failure log of the send.
            logger.log(
                logging.DEBUG if previous_term is None else logging.WARNING,
                "beat: publishing %s again (attempt %d; claimed in term %d, not confirmed)",
                pending.occurrence,
                pending.attempt + 1,
                pending.term,
            )
            confirmed = self._publish_and_confirm(ledger, entry, run, retaken, lease, previous_term)
        if isinstance(confirmed, EntryState) and self._may_record(lease):
            with contextlib.suppress(Exception):  # bookkeeping only, as in _report
                self.record_run(entry, run, confirmed)
        return confirmed

    def _pending_run(self, entry: Any, pending: PendingPublish) -> PlannedRun:
        """The run ``pending`` stands for, planned again from the state it advanced, so a
        republish lists the missed runs the first publish listed."""
        _, due = parse_occurrence_id(pending.occurrence)
        if pending.after is not None and self._settings is not None:
            policy, limit = self._settings.misfire_policy, self._settings.catch_up_limit
            with contextlib.suppress(Exception):
                for run in plan_due(entry.schedule, pending.after, due, policy, limit):
                    if run.send == due:
                        return run
        return PlannedRun(advance_to=due, send=due)

    def _publish_and_confirm(
        self,
        ledger: OccurrenceLedger,
        entry: Any,
        run: PlannedRun,
        claimed: EntryState,
        lease: Lease,
        republished: int | None,
    ) -> EntryState | Claim | None:
        """Publish the run ``claimed`` holds pending, then confirm it (see _claim_and_send)."""
        pending = claimed.pending
        assert pending is not None
        self.fault_point("claimed", pending.occurrence)
        if not self._may_act(lease):
            return None  # paused since the claim: left pending, for whoever leads now
        error = self._publish(entry, run, claimed, lease, pending, republished)
        if error is not None:
            self._send_error = error
            note = "; it stays pending and is published again"
            label = f"sending {pending.occurrence}"
            self._pacing.sends.failed(self._monotonic(), label, error, note=note)
            return None
        self.fault_point("published", pending.occurrence)
        confirmed = claimed.confirmed()
        if ledger.claim(*fence(lease), entry.name, confirmed) is Claim.REFUSED:
            return Claim.REFUSED  # still pending: the next leader publishes it again
        self._pacing.sends.recovered(self._monotonic(), "sending periodic tasks")
        return confirmed

    def _publish(
        self,
        entry: Any,
        run: PlannedRun,
        new: EntryState,
        lease: Lease,
        pending: PendingPublish,
        republished: int | None,
    ) -> Exception | None:
        """Send ``run`` under ``pending``'s task id the way Celery's scheduler does, with a new
        publish id; ``republished`` is the term that claimed it first, when not this one. The
        error, if any."""
        assert new.sent_at is not None
        term, _ = fence(lease)
        sender = lease.member_id or ""
        headers = send_headers(entry.name, run, term=term, sender=sender, sent_at=new.sent_at)
        headers[ELECTION_HEADER] = self._ledger.election if self._ledger else ""
        headers[PUBLISH_ID_HEADER] = uuid.uuid4().hex
        if republished is not None:
            headers[REPUBLISHED_HEADER] = republished
        options = dict(entry.options or {})
        options["headers"] = {**(options.get("headers") or {}), "celery_beat_task": True, **headers}
        options["task_id"] = pending.task_id
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
        except Exception as exc:  # noqa: BLE001 - reported by the caller, with its traceback
            return exc
        return None

    def _report(self, entry: Any, run: PlannedRun, new: EntryState, lease: Lease) -> None:
        name: str = entry.name
        record_beat_run(self._leadership, name, run)  # the metrics (celery/metrics.py)
        if run.skipped:
            assert run.skipped_from is not None
            logger.warning(
                "beat: %d run(s) of %r missed during a failover, due from %s, recorded as "
                "skipped (misfire policy %s)",
                run.skipped,
                name,
                format_due(run.skipped_from),
                self._settings.misfire_policy if self._settings else "?",
            )
        if run.send is None:
            return
        if not self._may_act(lease):
            return  # paused since the claim: the successor keeps the metadata (bookkeeping only)
        # Not yet in an early term, whose predecessor may still write the metadata: the ledger
        # holds the run; the metadata catches up with the next run recorded.
        if self._may_record(lease):
            try:
                self.record_run(entry, run, new)
            except Exception as exc:  # noqa: BLE001 - the run was sent: only metadata lags
                logger.warning(
                    "beat: %s was sent but its last run could not be recorded in the schedule "
                    "(%s: %s)",
                    occurrence_id(name, run.send),
                    type(exc).__name__,
                    exc,
                )
        occurrence = occurrence_id(name, run.send)
        if run.coalesced_count:
            logger.warning(
                "beat: sending %s (term %d) for itself and %d missed run(s)",
                occurrence,
                lease.term,
                run.coalesced_count,
            )
        else:
            logger.info("beat: sending %s (%s, term %d)", occurrence, entry.task, lease.term)


_GATED: dict[type[Any], type[Any]] = {}


def leader_gated(scheduler_class: type[Any]) -> type[Any]:
    """A leader-gated subclass of any ``celery.beat.Scheduler`` subclass (one per class)::

        LeaderPersistentScheduler = leader_gated(celery.beat.PersistentScheduler)

    Hooks the inner class cannot express by itself (its gates, where its metadata goes) are
    overridden in a subclass of the result; see :class:`LeaderGatedMixin`.
    """
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, Scheduler)):
        raise TypeError(
            f"leader_gated() needs a celery.beat.Scheduler subclass, not {scheduler_class!r}"
        )
    if issubclass(scheduler_class, LeaderGatedMixin):
        return scheduler_class
    gated = _GATED.get(scheduler_class)
    if gated is None:
        gated = type(
            f"LeaderGated{scheduler_class.__name__}",
            (LeaderGatedMixin, scheduler_class),
            {"__module__": __name__, "__doc__": f"{scheduler_class.__name__} behind the election."},
        )
        _GATED[scheduler_class] = gated
    return gated
