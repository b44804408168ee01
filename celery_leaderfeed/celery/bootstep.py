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
  with ``retry=True``: a store outage delays the election, never the worker.

Shutdown order
--------------
Leadership is given up only once this worker cannot run leader-only work any more:

* warm (begun by ``worker_shutting_down``, the signal handler's notice, else by ``stop``,
  which runs before the Pool step's): the lease is marked follower everywhere at once, so
  no new leader-only body is admitted and the embedded beat stops sending; the worker keeps
  renewing until every leader-only body admitted before has ended (bodies run holding the
  segment's admission lock shared; this step waits to take it exclusively), then resigns, so a
  follower takes over at once instead of after an election timeout. Ordinary tasks drain
  afterwards, under the new leader; they never hold the handover up;
* cold (``terminate``; its signal, too, stops admitting at once): the pool is terminated first
  (prefork children are killed and joined, dropping their locks; threads cannot be killed, so
  a thread pool's running tasks are waited for), then it resigns.

Either way no other worker can start leader-only work while this worker's still runs. A worker
killed with SIGKILL resigns nothing: its lease runs out by itself, and its orphaned children find
no lease (their parent PID changed).

Accessors for in-process code (the beat scheduler, ``@leader_only``)
--------------------------------------------------------------------
``worker_feed(app) -> LeaderFeed | None``
    The live feed of the step running in *this* process: the worker's main process (thread and
    solo pools, remote-control commands). ``None`` in every other process - a forked child must
    never trust its frozen copy of the parent's feed - and before start or after stop.
``current_lease(app=None) -> SharedView | None``
    This worker's lease as one consistent snapshot, from any of its processes: the live feed in
    the main process; the parent's shared-memory segment in a pool child or the embedded beat
    process (no store round trip). ``None`` where no step runs or the parent is gone.
    ``view.is_leader()`` checks the lease deadline at call time; ``view.term`` is the fencing
    token. Children find the segment by their parent's PID and the election name, which the
    step exports as ``$LEADERFEED_WORKER_ELECTION`` before the pool starts: a child whose app
    object is not the worker's (a task module's own app under ``spawn``) still finds it.
``worker_settings(app)``, ``leadership_report(app)``
    The resolved settings as this worker uses them; the ``celery inspect leaderfeed`` reply.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ._extras import celery_extra

with celery_extra():
    import click
    from celery import bootsteps, current_app
    from celery.signals import worker_shutting_down
    from celery.utils.dispatch import Signal

from ..engine.election import Role
from ..engine.feed import LeaderFeed
from ..errors import ConfigurationError
from ..urls import redact_url
from .settings import DEFAULTS, LeaderfeedSettings, resolve_settings, unknown_settings
from .shared_lease import SharedLease, SharedView
from .signals import leadership_gained, leadership_lost

__all__ = [
    "ELECTION_ENV",
    "LeaderFeedStep",
    "WorkerConfigurationError",
    "WorkerLeadership",
    "current_lease",
    "leader_admission",
    "leadership_report",
    "worker_feed",
    "worker_settings",
]

logger = logging.getLogger("celery_leaderfeed")

#: Environment variable naming the election of the worker step in this process, inherited by
#: the worker's children.
ELECTION_ENV = "LEADERFEED_WORKER_ELECTION"
#: How long a process that found no lease segment waits before looking again.
_ATTACH_RETRY_SECONDS = 1.0
#: How long stopping waits for a hand-over the shutdown signal began (it normally takes ms).
_HAND_OVER_JOIN_SECONDS = 10.0


class WorkerConfigurationError(ConfigurationError, click.ClickException):
    """A bad leaderfeed setting, raised while the worker is built.

    Also a ``click.ClickException``, so ``celery worker`` exits with one ``Error: ...`` line
    and status 1 instead of a traceback; code that builds workers itself catches it as a
    :class:`~celery_leaderfeed.errors.ConfigurationError`.
    """

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, f"leaderfeed: {message}")


def _resolve_for_worker(app: Any, options: Mapping[str, Any]) -> LeaderfeedSettings:
    overrides = {key: options[key] for key in DEFAULTS if options.get(key) is not None}
    try:
        settings = resolve_settings(app, overrides)
    except ConfigurationError as exc:
        raise WorkerConfigurationError(str(exc)) from exc
    for key, value in overrides.items():
        app.conf[key] = value  # children (fork or spawn) and the embedded beat read app.conf
    return settings


def _check_store_reach(settings: LeaderfeedSettings, *, embedded_beat: bool) -> None:
    """Refuse (under -B) or warn about a store that other processes cannot see."""
    if settings.shared_across_processes:
        return
    url = redact_url(settings.backend_url)
    if embedded_beat:
        raise WorkerConfigurationError(
            f"leaderfeed_backend {url} keeps the election inside this worker process, and -B "
            "runs beat in another process that cannot see it: use a store that processes "
            "share (redis://, mongodb://, rethinkdb://)"
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

    from .scheduler import LeaderScheduler  # noqa: PLC0415 - beat's side; needed only with -B

    aliases = dict(load_extension_class_names("celery.beat_schedulers"))
    try:
        scheduler = symbol_by_name(worker.scheduler, aliases=aliases)
    except (ImportError, AttributeError, ValueError):
        return False  # a bad scheduler name: Celery's beat reports it in its own words
    return isinstance(scheduler, type) and issubclass(scheduler, LeaderScheduler)


class _SignalRelay:
    """Sends ``leadership_gained``/``leadership_lost`` for the lease changes the engine reports.

    ``observe`` runs on the election thread and only queues; the signals are sent from this
    relay's own thread, in order, so a slow receiver never delays a renewal.
    """

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self._held: int | None = None  # the term we lead, as last reported
        self._queue: queue.SimpleQueue[tuple[Signal, int, str | None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def observe(self, feed: LeaderFeed) -> None:
        lease = feed.lease  # stable here: observers run on the election thread
        term = lease.term if feed.is_leader else None
        if term == self._held:
            return
        if self._held is not None:
            leader = feed.leader_id
            leader = None if leader == self.hostname else leader
            self._queue.put((leadership_lost, self._held, leader))
        if term is not None:
            self._queue.put((leadership_gained, term, self.hostname))
        self._held = term

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leaderfeed-signals", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            signal, term, leader = item
            # Signal.send logs and swallows what a receiver raises.
            signal.send(sender=self.hostname, term=term, leader_id=leader)


class WorkerLeadership:
    """What the step runs in the worker: the feed, its lease segment and the signal relay."""

    def __init__(self, app: Any, hostname: str, settings: LeaderfeedSettings) -> None:
        self.app = app
        self.hostname = hostname
        self.settings = settings
        try:
            self.feed = LeaderFeed(
                settings.backend_url, member_id=hostname, **settings.feed_kwargs()
            )
        except ConfigurationError as exc:
            raise WorkerConfigurationError(str(exc)) from exc
        self.owner_pid = os.getpid()
        self.shared = SharedLease.create(settings.name, hostname)
        # Children find the segment by parent PID and election name. They inherit the name
        # here even when their app object is not this one (a task module's own app under
        # spawn), so they attach to this worker's segment whatever their configuration says.
        os.environ[ELECTION_ENV] = settings.name
        self._relay = _SignalRelay(hostname)
        # (version of the held record, monotonic time this worker saw it appear)
        self._record_seen: tuple[int | None, float] = (None, time.monotonic())
        self._stopped = False
        #: Set by hand_over: the lease is no longer shown to anyone, though the feed renews it.
        self._standing_down = False
        self._publishing = threading.Lock()
        self._hand_over_lock = threading.Lock()
        self._handed_over = False
        self._hand_over_thread: threading.Thread | None = None
        self.feed.add_observer(self._publish)
        self.feed.add_observer(self._relay.observe)
        self.feed.add_observer(self._note_record)

    def start(self) -> None:
        _register(self)
        self._relay.start()
        self.feed.start(retry=True)

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
            self.shared.wait_admitted(on_wait=self._log_waiting)
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

    def _log_waiting(self) -> None:
        logger.info(
            "leaderfeed %r: shutting down; resigning once the running leader-only tasks end",
            self.settings.name,
        )

    def _publish(self, feed: LeaderFeed) -> None:
        with self._publishing:
            if not self._standing_down:
                self.shared.publish(feed)

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
            _unregister(self)
            if os.environ.get(ELECTION_ENV) == self.settings.name:
                del os.environ[ELECTION_ENV]
            self.shared.revoke(self.hostname)
            self.shared.close()
            self._relay.stop()

    def view(self) -> SharedView:
        """The lease as children see it in the segment, read from the live feed."""
        if self._standing_down:  # from hand_over on, whatever the feed still holds
            return SharedView(
                Role.FOLLOWER, None, None, 0.0, 0.0, None, self.hostname, self.owner_pid
            )
        feed = self.feed
        lease = feed.lease
        return SharedView(
            role=lease.role,
            term=lease.term,
            token=lease.token,
            valid_from=lease.valid_from,
            deadline=lease.deadline,
            leader_id=feed.leader_id,
            member_id=self.hostname,
            owner_pid=self.owner_pid,
        )

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
        return {
            **self.summary(),
            "backend": self.feed.backend.display_url,
            "lease_age": None if version is None else round(now - seen_at, 3),
            "lease_remaining": round(lease.deadline - now, 3) if leading else None,
            "leading_for": (
                round(now - lease.acquired_at, 3)
                if leading and lease.acquired_at is not None
                else None
            ),
            "store_error": self.feed.fault,
        }

    def _note_record(self, feed: LeaderFeed) -> None:
        known = feed.known
        record = known.record if known is not None else None
        version = record.version if record is not None and not record.vacant else None
        if version != self._record_seen[0]:
            self._record_seen = (version, time.monotonic())


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
        super().__init__(parent, **kwargs)

    def create(self, parent: Any) -> WorkerLeadership:
        return WorkerLeadership(parent.app, parent.hostname, self.settings)

    def start(self, parent: Any) -> None:
        self.obj.start()
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


def _finish_pool(worker: Any, *, warm: bool) -> None:
    """Make sure no task of this worker still runs (the Pool step's stop is idempotent)."""
    pool = getattr(worker, "pool", None)
    if pool is None:
        return
    if not warm:
        pool.terminate()  # prefork: children killed and joined
    pool.stop()  # waits for running tasks: all of them (warm), the unkillable threads (cold)


# -- the registry of running steps, and the accessors ---------------------------------------------

_running: weakref.WeakKeyDictionary[Any, WorkerLeadership] = weakref.WeakKeyDictionary()
_segments: dict[tuple[int, int, str], SharedLease | float] = {}
_settings_cache: weakref.WeakKeyDictionary[Any, tuple[int, LeaderfeedSettings | None]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _app_object(app: Any) -> Any:
    if app is None:
        app = current_app
    unwrap = getattr(app, "_get_current_object", None)  # celery.current_app is a Proxy
    return unwrap() if callable(unwrap) else app


def _register(leadership: WorkerLeadership) -> None:
    with _lock:
        _running[leadership.app] = leadership


def _unregister(leadership: WorkerLeadership) -> None:
    with _lock:
        if _running.get(leadership.app) is leadership:
            del _running[leadership.app]


def _running_here(app: Any) -> WorkerLeadership | None:
    leadership = _running.get(app)
    if leadership is None or leadership.owner_pid != os.getpid():
        return None
    return leadership


def worker_feed(app: Any = None) -> LeaderFeed | None:
    """The live feed of the worker step running in this process (None elsewhere)."""
    leadership = _running_here(_app_object(app))
    return None if leadership is None else leadership.feed


def worker_settings(app: Any = None) -> LeaderfeedSettings | None:
    """The leaderfeed settings of ``app`` as this worker uses them, resolved once per process;
    None if they cannot be resolved (no leaderfeed configured)."""
    app = _app_object(app)
    leadership = _running_here(app)
    if leadership is not None:
        return leadership.settings
    pid = os.getpid()
    cached = _settings_cache.get(app)
    if cached is not None and cached[0] == pid:
        return cached[1]
    try:
        settings: LeaderfeedSettings | None = resolve_settings(app)
    except ConfigurationError as exc:
        logger.debug("leaderfeed settings of %r cannot be resolved: %s", app, exc)
        settings = None
    _settings_cache[app] = (pid, settings)
    return settings


def current_lease(app: Any = None) -> SharedView | None:
    """This worker's lease, from whichever of its processes asks (see the module docstring)."""
    source = _lease_source(_app_object(app))
    return None if source is None else source[1]()


def _lease_source(app: Any) -> tuple[SharedLease, Callable[[], SharedView | None]] | None:
    """Where this process reads its worker's lease: (segment, read), or None if it has none.

    The main process reads the live feed; a child reads its parent's segment.
    """
    leadership = _running_here(app)
    if leadership is not None:
        return leadership.shared, leadership.view
    election = os.environ.get(ELECTION_ENV)
    if not election:
        settings = worker_settings(app)
        if settings is None:
            return None
        election = settings.name
    segment = _parent_segment(election)
    if segment is None:
        return None
    return segment, functools.partial(_read_parents, segment)


def _parent_segment(election: str) -> SharedLease | None:
    """The lease segment of this process's parent (a prefork child or the beat process)."""
    pid, ppid = os.getpid(), os.getppid()
    key = (pid, ppid, election)
    with _lock:
        entry = _segments.get(key)
        if not isinstance(entry, SharedLease):
            now = time.monotonic()
            if entry is not None and now < entry:
                return None
            attached = SharedLease.attach(election, ppid)
            if attached is None:
                _segments[key] = now + _ATTACH_RETRY_SECONDS
                return None
            _segments[key] = entry = attached
    return entry


def _read_parents(segment: SharedLease) -> SharedView | None:
    view = segment.read()
    # A parent that died leaves its segment to a reused PID at worst: trust only our parent's.
    return view if view.owner_pid == os.getppid() else None


@contextlib.contextmanager
def leader_admission(app: Any = None) -> Iterator[SharedView | None]:
    """This worker's lease; while it says leader, the block runs holding the admission lock.

    A warm shutdown marks the lease follower and then waits for that lock (see
    :meth:`WorkerLeadership.hand_over`), so a body that starts inside the block while the view
    says leader is one the worker waits for before it resigns. A view that says follower is
    yielded without the lock: followers never touch it.
    """
    source = _lease_source(_app_object(app))
    if source is None:
        yield None
        return
    segment, read = source
    view = read()
    if view is None or not view.is_leader():
        yield view
        return
    with segment.admission() as admitted:
        yield read() if admitted else None  # read again: a handover may have begun meanwhile


def leadership_report(app: Any = None) -> dict[str, Any] | None:
    """What ``celery inspect leaderfeed`` returns for this worker (None: no step runs here)."""
    leadership = _running_here(_app_object(app))
    return None if leadership is None else leadership.report()
