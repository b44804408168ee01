"""``LeaderFeedStep``: one election member per Celery worker, shared with the worker's processes.

The step lives in the *worker* blueprint: the consumer blueprint is restarted on every broker
reconnect, and an election there would resign and start over on each broker blip. The worker's
node name (``worker.hostname``) is its member id.

Lifecycle
---------
* ``__init__`` resolves the settings (``--leaderfeed-*`` worker options, then ``app.conf``, then
  defaults) and fails the worker at once with one line if they are bad. Options given on the
  command line are written into ``app.conf``, so every process of this worker (prefork children
  under ``fork`` or ``spawn``, the embedded beat) resolves the same settings. It warns once about
  ``leaderfeed*`` keys no setting reads, and about an in-process store (``memory://``), which
  each worker process elects in alone; with ``-B`` and the leaderfeed scheduler such a store is
  refused: the embedded beat runs in another process and could never claim a run.
* ``create`` builds the feed (it connects later) and the shared-memory lease segment, before
  the pool and the embedded beat process fork.
* ``start`` runs after the pool and beat started (the step requires both) and starts the feed
  with ``retry=True``: a store outage delays the election, never the worker. It also takes
  the leader queue out of what the consumer starts with (even if ``-Q`` names it) and warns
  about leader-only tasks routed where the leader would not take them; from then on the
  worker consumes the leader queue exactly while its lease is valid
  (:class:`~celery_leaderfeed.celery.leader_queue.LeaderQueueConsumer`, nudged on every lease
  change and every heartbeat). A broker transport that cannot cancel a consumer stops the
  worker in ``__init__``.

Shutdown order
--------------
Leadership is given up only once this worker cannot run leader-only work any more:

* warm (begun by ``worker_shutting_down``, the signal handler's notice, else by ``stop``,
  which runs before the Pool step's): the lease is marked follower everywhere at once, so
  no new leader-only body is admitted and the embedded beat stops sending; the consumer of
  the leader queue is cancelled (what was prefetched goes back to the queue through the
  body-time check of ``@leader_only``); the worker keeps
  renewing until every leader-only body admitted before has ended (bodies run holding the
  segment's admission lock shared; this step waits to take it exclusively), then resigns, so a
  follower takes over at once instead of after an election timeout. Ordinary tasks drain
  afterwards, under the new leader; they never hold the handover up;
* cold (``terminate``; its signal, too, stops admitting at once): the pool is terminated first
  (prefork children are killed and joined, dropping their locks; threads cannot be killed, so
  a thread pool's running tasks are waited for), then it resigns;
* ``elect`` of another worker (the engine's resign hook, ``_before_resign``): the same three
  steps as a warm shutdown - follower everywhere, the consumer cancelled, the admitted bodies
  waited for - each bounded by the hook's deadline (one heartbeat at most), then the engine
  writes the resign.

In each case no other worker can start leader-only work while this worker's still runs. A worker
killed with SIGKILL resigns nothing: its lease runs out by itself, and its orphaned children find
no lease (their parent PID changed).

The worker's processes read the lease this step publishes through
:mod:`~celery_leaderfeed.celery.worker_lease` (``current_lease``, ``leader_admission``...),
which this step registers with while it runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from ._extras import celery_extra

with celery_extra():
    from celery import bootsteps
    from celery.signals import worker_shutting_down

from ..engine.election import Resignation
from ..engine.feed import LeaderFeed, Status
from ..errors import ConfigurationError, LeaderfeedError
from ..urls import redact_url
from .body_counts import BodyCounts
from .leader_queue import LeaderQueueConsumer, check_broker_cancels, misrouted_leader_tasks
from .metrics import WorkerMetrics
from .settings import (
    DEFAULTS,
    LeaderfeedSettings,
    StartupConfigurationError,
    resolve_settings,
    unknown_settings,
)
from .shared_lease import SharedLease
from .signals import send_leadership_signals
from .worker_lease import ELECTION_ENV, register, unregister

__all__ = ["LeaderFeedStep", "WorkerLeadership"]

logger = logging.getLogger("celery_leaderfeed")

#: How long stopping waits for a hand-over the shutdown signal began (it normally takes ms).
_HAND_OVER_JOIN_SECONDS = 10.0
#: How often the resign hook looks whether the running leader-only bodies ended.
_RESIGN_POLL_SECONDS = 0.002
#: How often the standing-down mailbox looks whether to stop, and how long closing it waits.
_MAILBOX_POLL_SECONDS = 0.1
_MAILBOX_CLOSE_SECONDS = 1.0


def _resolve_for_worker(app: Any, options: Mapping[str, Any]) -> LeaderfeedSettings:
    overrides = {key: options[key] for key in DEFAULTS if options.get(key) is not None}
    try:
        settings = resolve_settings(app, overrides)
    except ConfigurationError as exc:
        raise StartupConfigurationError(str(exc)) from exc
    for key, value in overrides.items():
        app.conf[key] = value  # children (fork or spawn) and the embedded beat read app.conf
    return settings


def _check_store_reach(settings: LeaderfeedSettings, *, embedded_beat: bool) -> None:
    """Refuse (under -B) or warn about a store that other processes cannot see."""
    if settings.shared_across_processes:
        return
    url = redact_url(settings.backend_url)
    if embedded_beat:
        raise StartupConfigurationError(
            f"leaderfeed_backend {url} keeps the election inside this worker process, and -B "
            "runs beat in another process that cannot see it: use a store that processes "
            "share (redis://, postgresql://, mongodb://, rethinkdb://)"
        )
    logger.warning(
        "leaderfeed: leaderfeed_backend %s keeps the election inside each worker process, so "
        "every worker process elects itself leader (fine for a single worker or tests)",
        url,
    )


def _embeds_leader_beat(worker: Any, options: Mapping[str, Any]) -> bool:
    """True if this worker runs an embedded beat (-B) with the leaderfeed scheduler."""
    if not options.get("beat"):
        return False
    from celery.utils.imports import load_extension_class_names, symbol_by_name  # noqa: PLC0415

    from .leader_gated import LeaderGatedMixin  # noqa: PLC0415 - beat's side; only with -B

    aliases = dict(load_extension_class_names("celery.beat_schedulers"))
    try:
        scheduler = symbol_by_name(worker.scheduler, aliases=aliases)
    except (ImportError, AttributeError, ValueError):
        return False  # a bad scheduler name: Celery's beat reports it in its own words
    return isinstance(scheduler, type) and issubclass(scheduler, LeaderGatedMixin)


class WorkerLeadership:
    """What the step runs in the worker: the feed, its lease segment and the signals it sends."""

    def __init__(self, app: Any, hostname: str, settings: LeaderfeedSettings) -> None:
        self.app = app
        self.hostname = hostname
        self.settings = settings
        try:
            self.feed = settings.feed(hostname)
            self.metrics = WorkerMetrics(self, settings.name, settings.metrics_port)
        except ConfigurationError as exc:
            raise StartupConfigurationError(str(exc)) from exc
        self.owner_pid = os.getpid()
        self.shared = SharedLease.create(settings.name, hostname)
        self.body_counts = BodyCounts.create(settings.name)  # @leader_only bodies, all processes
        # Children find the segment by parent PID and election name. They inherit the name
        # here even when their app object is not this one (a task module's own app under
        # spawn), so they attach to this worker's segment whatever their configuration says.
        os.environ[ELECTION_ENV] = settings.name
        # (version of the held record, monotonic time this worker saw it appear)
        self._record_seen: tuple[int | None, float] = (None, time.monotonic())
        self._stopped = False
        #: Set by hand_over: the lease is no longer shown to anyone, though the feed renews it.
        self._standing_down = False
        #: Set while handing over to the worker named (``hand_over_to``), the same way.
        self._draining_for: str | None = None
        self._publishing = threading.Lock()
        self._hand_over_lock = threading.Lock()
        self._handed_over = False
        self._hand_over_thread: threading.Thread | None = None
        #: The worker's consumer of the leader queue (None until ``attach_consumer``).
        self.queue_consumer: LeaderQueueConsumer | None = None
        #: The term the engine is about to give up (set by the resign hook): not consumed under.
        self._resigning_term: int | None = None
        self.feed.add_observer(self._publish)
        self.feed.add_resign_hook(self._before_resign)
        send_leadership_signals(self.feed)
        self.feed.add_observer(self._note_record)

    def attach_consumer(self, consumer: Any) -> None:
        """Consume the leader queue through ``consumer`` (the worker's) while leading."""
        self.queue_consumer = LeaderQueueConsumer(self.app, consumer)

    def start(self) -> None:
        register(self)
        self.metrics.start()
        self.feed.start(retry=True)

    def sync_consumer(self) -> None:
        """Consume the leader queue exactly while this worker may act as leader.

        Called by the engine's observer on every lease change and on the worker's timer every
        heartbeat (a lease also ends by its deadline, with no change to observe). Never blocks.
        """
        queue_consumer = self.queue_consumer
        if queue_consumer is not None:
            lease = self.feed.lease
            leading = (
                not self._standing_down
                and self._draining_for is None
                and not self._stopped
                and lease.valid()
                and lease.term != self._resigning_term
            )
            queue_consumer.want(leading)

    def _before_resign(self, resignation: Resignation) -> None:
        """Engine thread, before a voluntary resign (``elect`` of another worker, ``stop``):
        stop leader-only work as a warm shutdown does, each wait bounded by the resignation's
        deadline - the segment says follower (what was prefetched goes back through the
        body-time check), the leader queue's consumer is cancelled, the running leader-only
        bodies end. The engine writes the resign after this returns."""
        self._resigning_term = resignation.term
        with self._publishing:
            self.shared.revoke(self.hostname)
        queue_consumer = self.queue_consumer
        if queue_consumer is not None:
            left = resignation.deadline - time.monotonic()
            queue_consumer.stop_consuming(wait=True, timeout=left)
        left = resignation.deadline - time.monotonic()
        self.shared.wait_admitted(poll=_RESIGN_POLL_SECONDS, timeout=left)

    def hand_over(self) -> None:
        """Warm shutdown: admit no new leader-only work, wait for what runs, then resign.

        The feed keeps renewing meanwhile, so no other worker can start leader-only work
        while one of ours still runs; ordinary tasks do not hold the handover up.
        """
        with self._hand_over_lock:  # once; a second caller waits for the first to finish
            if self._handed_over:
                return
            with self._publishing:
                self._standing_down = True
                self.shared.revoke(self.hostname)
            # No new leader-queue deliveries; what was prefetched is sent back to the queue by
            # the body-time check (the lease above says follower now).
            if self.queue_consumer is not None:
                self.queue_consumer.stop_consuming(wait=True)
            mailbox = StandingDownMailbox(self)
            try:
                self.shared.wait_admitted(on_wait=lambda: self._log_waiting(mailbox))
            finally:
                mailbox.close()
            self.feed.stop()
            self._handed_over = True

    def begin_hand_over(self) -> None:
        """Start :meth:`hand_over` on a thread of its own, as soon as a shutdown is requested.

        Celery stops the consumer and other steps before this one, which can take most of a
        second; the shutdown signal tells us earlier. Safe in a signal handler: it only starts a
        thread. The step's ``stop`` then waits for this hand-over instead of starting another.
        """
        if self._hand_over_thread is not None or self._stopped:
            return
        self._hand_over_thread = threading.Thread(
            target=self.hand_over, name="leaderfeed-handover", daemon=True
        )
        self._hand_over_thread.start()

    def _log_waiting(self, mailbox: StandingDownMailbox) -> None:
        logger.info(
            "leaderfeed %r: shutting down; resigning once the running leader-only tasks end",
            self.settings.name,
        )
        mailbox.open()  # Celery's remote control stops with the consumer, before this wait

    @property
    def standing_down(self) -> bool:
        """True while this worker holds a valid lease but admits no leader-only work: a warm
        shutdown or an ``elect`` of another worker, until it resigns."""
        lease = self.feed.lease
        return lease.valid() and (
            self._standing_down
            or self._draining_for is not None
            or lease.term == self._resigning_term
        )

    def request_leadership(
        self, election: str | None = None, *, nominate: bool = True
    ) -> dict[str, Any]:
        """Whether this worker can lead, and (``nominate``) ask the engine to make it the leader
        (the ``leaderfeed_elect`` command).

        Returns at once: ``{"ok": ..., "leader": ..., "term": ...}``, or ``{"error": ...}`` when
        this worker cannot lead. With ``nominate`` the engine nominates this member in the
        record; the leader stops its leader-only work, resigns naming it, and this member claims
        at once. The caller watches the store for the outcome.
        """
        feed = self.feed
        if election is not None and election != self.settings.name:
            return {
                "error": f"{self.hostname} is a member of election {self.settings.name!r}, "
                f"not {election!r}"
            }
        if self._standing_down or self._stopped:
            return {"error": f"{self.hostname} is shutting down"}
        if feed.status is not Status.STARTED:
            fault = f" ({feed.fault})" if feed.fault else ""
            return {
                "error": f"{self.hostname} has not joined the election: it is "
                f"{feed.status.value}{fault}"
            }
        leader, term = feed.leader_id, feed.term
        if feed.is_leader:
            return {"ok": f"{self.hostname} leads already", "leader": leader, "term": term}
        if not nominate:
            return {"ok": f"{self.hostname} can lead", "leader": leader, "term": term}
        thread = threading.Thread(target=self._elect_self, name="leaderfeed-elect", daemon=True)
        thread.start()
        logger.info("leaderfeed %r: asked to lead (leader: %s)", self.settings.name, leader)
        return {"ok": f"{self.hostname} asks to lead", "leader": leader, "term": term}

    def hand_over_to(
        self, node: str, election: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Hand leadership to ``node`` (the ``leaderfeed_hand_over`` command): as at a warm
        shutdown, admit no new leader-only work and stop consuming the leader queue while the
        feed keeps renewing, wait for the running leader-only bodies (up to ``timeout``), then
        the engine's transfer (``feed.elect(node)``) resigns naming ``node``, who claims at once.

        Returns at once (the work runs on a thread): ``{"ok": ...}`` or ``{"error": ...}``. If
        the bodies outlast ``timeout``, nothing is written and this worker leads on; if ``node``
        dies before it claims, the others claim the vacancy after ``election_timeout_min``.
        """
        if election is not None and election != self.settings.name:
            return {
                "error": f"{self.hostname} is a member of election {self.settings.name!r}, "
                f"not {election!r}"
            }
        if not self.feed.is_leader or self._standing_down or self._stopped:
            return {"error": f"{self.hostname} does not lead"}
        if node == self.hostname:
            return {"ok": f"{self.hostname} leads already", "leader": self.hostname}
        with self._publishing:
            if self._draining_for is not None:
                return {"error": f"{self.hostname} is handing over to {self._draining_for}"}
            self._draining_for = node
            self.shared.revoke(self.hostname)
        wait = timeout if timeout is not None else 2 * self.settings.timing.election_timeout_max
        threading.Thread(
            target=self._drain_and_elect,
            args=(node, wait),
            name="leaderfeed-hand-over",
            daemon=True,
        ).start()
        logger.info("leaderfeed %r: handing over to %s", self.settings.name, node)
        return {"ok": f"{self.hostname} hands over to {node}", "leader": self.hostname}

    def _drain_and_elect(self, node: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            if self.queue_consumer is not None:
                self.queue_consumer.stop_consuming(wait=True, timeout=timeout)
            if not self.shared.wait_admitted(timeout=max(0.0, deadline - time.monotonic())):
                logger.warning(
                    "leaderfeed %r: not handing over to %s: leader-only tasks still ran after "
                    "%g s; leading on",
                    self.settings.name,
                    node,
                    timeout,
                )
                return
            self.feed.elect(node, timeout=max(0.0, deadline - time.monotonic()))
        except LeaderfeedError as exc:
            logger.warning("leaderfeed %r: handing over to %s: %s", self.settings.name, node, exc)
        finally:
            with self._publishing:
                self._draining_for = None
            self._publish(self.feed)  # the lease as it is now: a follower, or leading on

    def _elect_self(self) -> None:
        try:
            self.feed.elect()
        except LeaderfeedError as exc:
            logger.warning("leaderfeed %r: elect %s: %s", self.settings.name, self.hostname, exc)

    def _publish(self, feed: LeaderFeed) -> None:
        """Copy the feed's lease into the segment, where every process of this worker reads it
        (this one included), unless it is standing down."""
        lease = dataclasses.replace(feed.lease, leader_id=feed.leader_id, member_id=self.hostname)
        with self._publishing:
            if not self._standing_down and self._draining_for is None:
                self.shared.write(lease)
        self.sync_consumer()

    def stop(self) -> None:
        """Stop acting, resign, then retire the segment. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        thread = self._hand_over_thread
        if thread is not None:
            # Cold shutdown ends the pool first, so an early hand-over has nothing left to
            # wait for; let it finish before the segment it locks goes away.
            thread.join(_HAND_OVER_JOIN_SECONDS)
        try:
            self.feed.stop()
        finally:
            self.metrics.stop()  # before what it reads goes away
            unregister(self)
            if os.environ.get(ELECTION_ENV) == self.settings.name:
                del os.environ[ELECTION_ENV]
            self.shared.revoke(self.hostname)
            self.shared.close()
            self.body_counts.close()

    def summary(self) -> dict[str, Any]:
        """Role, leader and term (``celery inspect stats``)."""
        feed = self.feed
        return {
            "name": feed.name,
            "member": self.hostname,
            "status": feed.status.value,
            "role": feed.role.value,
            "leader": feed.leader_id,
            "term": feed.term,
        }

    def queue_report(self) -> dict[str, Any]:
        """The leader queue, whether this worker consumes it and the messages it holds."""
        queue_consumer = self.queue_consumer
        return {
            "leader_queue": self.settings.queue,
            "consuming_leader_queue": bool(queue_consumer and queue_consumer.consuming),
            "leader_queue_messages": queue_consumer.held_messages() if queue_consumer else 0,
        }

    def report(self) -> dict[str, Any]:
        """The summary plus lease timings and the store (``celery inspect leaderfeed``).

        ``lease_age`` is the seconds since the leader's record last changed (a renewal) as
        this worker saw it; ``lease_remaining`` the seconds this worker may still act as
        leader unless it renews (None on followers); ``store_error`` what fails while the store
        or its change feed fails (password hidden; the worker's log has the same, rate-limited).
        """
        now = time.monotonic()
        lease = self.feed.lease
        leading = lease.valid(now)
        version, seen_at = self._record_seen
        standing_down = self.standing_down
        summary = self.summary()
        if standing_down:
            summary["role"] = "standing down"
        return {
            **summary,
            "standing_down": standing_down,
            "backend": self.feed.backend.display_url,
            "lease_age": None if version is None else round(now - seen_at, 3),
            "lease_remaining": round(lease.deadline - now, 3) if leading else None,
            "leading_for": (
                round(now - lease.acquired_at, 3)
                if leading and lease.acquired_at is not None
                else None
            ),
            "store_error": self.feed.fault,
            **self.queue_report(),
            "metrics": self.metrics.figures(),
        }

    def _note_record(self, feed: LeaderFeed) -> None:
        known = feed.known
        record = known.record if known is not None else None
        version = record.version if record is not None and not record.vacant else None
        if version != self._record_seen[0]:
            self._record_seen = (version, time.monotonic())


class StandingDownMailbox:
    """Answers ``celery inspect leaderfeed`` (and ``ping``) while a warm shutdown waits for the
    running leader-only bodies: Celery's own remote control has stopped with the consumer by
    then. A node of the app's mailbox on a broker connection of its own, served by one thread
    until :meth:`close`; any broker error just ends it (it is a courtesy, not a duty)."""

    def __init__(self, leadership: WorkerLeadership) -> None:
        self._leadership = leadership
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        self._thread = threading.Thread(
            target=self._serve, name="leaderfeed-standing-down-mailbox", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(_MAILBOX_CLOSE_SECONDS)

    def _serve(self) -> None:
        leadership = self._leadership
        app = leadership.app
        handlers = {
            "leaderfeed": lambda state, **kwargs: leadership.report(),
            "ping": lambda state, **kwargs: {"ok": "pong"},
        }
        try:
            with app.connection_for_write() as connection:
                channel = connection.default_channel
                node = app.control.mailbox.Node(
                    leadership.hostname, state=None, channel=channel, handlers=handlers
                )
                with node.listen(channel=channel):
                    while not self._stop.is_set():
                        try:
                            connection.drain_events(timeout=_MAILBOX_POLL_SECONDS)
                        except TimeoutError:
                            continue
        except Exception as exc:  # noqa: BLE001 - a broker problem here only costs the answers
            logger.debug("leaderfeed: standing-down mailbox ended: %r", exc)


class LeaderFeedStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep running this worker's election member (see the module docstring).

    ``app.steps['worker'].add(LeaderFeedStep)``, or ``celery_leaderfeed.install(app)``.
    """

    label = "Leaderfeed"
    # Started after the pool and the embedded beat forked; stopped before them, see stop().
    requires = ("celery.worker.components:Pool", "celery.worker.components:Beat")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.settings = _resolve_for_worker(parent.app, kwargs)
        _check_store_reach(self.settings, embedded_beat=_embeds_leader_beat(parent, kwargs))
        for warning in unknown_settings(parent.app):
            logger.warning("leaderfeed: %s", warning)
        try:
            check_broker_cancels(parent.app)
        except ConfigurationError as exc:
            raise StartupConfigurationError(str(exc)) from exc
        super().__init__(parent, **kwargs)

    def create(self, parent: Any) -> WorkerLeadership:
        return WorkerLeadership(parent.app, parent.hostname, self.settings)

    def start(self, parent: Any) -> None:
        leadership: WorkerLeadership = self.obj
        _prepare_leader_queue(parent.app, self.settings)
        consumer = getattr(parent, "consumer", None)
        if consumer is not None:
            leadership.attach_consumer(consumer)
            parent.timer.call_repeatedly(
                self.settings.timing.heartbeat_interval, leadership.sync_consumer
            )
        leadership.start()
        worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def _on_shutting_down(self, sender: Any = None, **kwargs: Any) -> None:
        # Sent from the worker's signal handler, warm or cold, in its main process only.
        leadership: WorkerLeadership | None = self.obj
        if leadership is not None and sender == leadership.hostname:
            leadership.begin_hand_over()

    def stop(self, parent: Any) -> None:
        """Warm shutdown: resign once no leader-only task runs; the pool drains after that."""
        worker_shutting_down.disconnect(self._on_shutting_down)
        leadership: WorkerLeadership = self.obj
        try:
            leadership.hand_over()  # begun by the shutdown signal already, as a rule
        except Exception:
            logger.exception("leaderfeed: handing over failed; resigning after the pool drained")
            _finish_pool(parent, warm=True)
        finally:
            leadership.stop()

    def terminate(self, parent: Any) -> None:
        """Cold shutdown: end the pool's tasks, then resign."""
        worker_shutting_down.disconnect(self._on_shutting_down)
        try:
            _finish_pool(parent, warm=False)
        finally:
            self.obj.stop()

    def info(self, parent: Any) -> dict[str, Any]:
        leadership: WorkerLeadership | None = self.obj
        return {} if leadership is None else {"leaderfeed": leadership.summary()}


def _prepare_leader_queue(app: Any, settings: LeaderfeedSettings) -> None:
    """Before the consumer starts: the leader queue only while leading; warn about routes
    that send leader-only tasks where the leader will not take them."""
    queues = app.amqp.queues
    consumed = set(queues.consume_from) if queues.consume_from is not None else set(queues)
    if settings.queue in consumed:  # -Q named it, or task_queues holds it
        logger.warning(
            "leaderfeed: this worker is told to consume the leader queue %s; it consumes it "
            "only while it leads",
            settings.queue,
        )
        queues.deselect(settings.queue)
        consumed.discard(settings.queue)
    for task, queue in misrouted_leader_tasks(app, consumed):
        logger.warning(
            "leaderfeed: leader-only task %s is routed to queue %s, which this worker does not "
            "consume, leading or not (as leader it takes the leader queue %s%s): unless some "
            "worker takes that queue and sends them on to the leader queue, they wait there; "
            "route it to %s",
            task,
            queue,
            settings.queue,
            f" and {', '.join(sorted(consumed))}" if consumed else "",
            settings.queue,
        )


def _finish_pool(worker: Any, *, warm: bool) -> None:
    """Make sure no task of this worker still runs (the Pool step's stop is idempotent)."""
    pool = getattr(worker, "pool", None)
    if pool is None:
        return
    if not warm:
        pool.terminate()  # prefork: children killed and joined
    pool.stop()  # waits for running tasks: all of them (warm), the unkillable threads (cold)
