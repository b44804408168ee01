"""A worker's lease as seen from inside its processes: who may act as leader right now.

The worker step (:mod:`~celery_leaderfeed.celery.bootstep`) registers itself here while it
runs and writes every lease change into a shared-memory segment
(:mod:`~celery_leaderfeed.celery.shared_lease`). Every process of the worker reads its lease
from that segment, the same way: the main process (solo and thread pools, remote-control
commands) from the segment it writes, a prefork child or the embedded beat process
(``celery worker -B``) from its parent's. No store round trip.

``current_lease(app=None) -> Lease | None``
    This worker's lease as one consistent snapshot, from any of its processes; ``None`` where
    no step runs or the worker is gone. ``lease.valid()`` (alias ``is_leader()``) checks the
    deadline at call time; ``lease.term`` is the fencing token. Children find the segment by
    their parent's PID and the election name, which the step exports as
    ``$LEADERFEED_WORKER_ELECTION`` before the pool starts: a child whose app object is not the
    worker's (a task module's own app under ``spawn``) still finds it.
``leader_admission(app=None)``
    The same lease; while it says leader, the block runs holding the segment's admission lock,
    which a worker handing over waits for (``@leader_only`` bodies run inside it).
``worker_feed(app)``
    The live feed of the step running in *this* process. ``None`` in every other process - a
    forked child must never trust its frozen copy of the parent's feed - and before start or
    after stop.
``worker_settings(app)``, ``leadership_report(app)``
    The resolved settings as this worker uses them; the ``celery inspect leaderfeed`` reply.
``simulate(source)``
    Tests only (the pytest plugin, :mod:`celery_leaderfeed.testing`): every lookup above in this
    process returns ``source()`` instead, until ``simulate(None)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ._extras import celery_extra

with celery_extra():
    from celery import current_app

from ..engine.election import Lease
from ..engine.feed import LeaderFeed
from ..errors import ConfigurationError
from .settings import LeaderfeedSettings, resolve_settings
from .shared_lease import SharedLease

__all__ = [
    "ELECTION_ENV",
    "RunningWorker",
    "current_lease",
    "leader_admission",
    "leadership_report",
    "register",
    "running_worker",
    "simulate",
    "unregister",
    "worker_feed",
    "worker_settings",
]

logger = logging.getLogger("celery_leaderfeed")

#: Environment variable naming the election of the worker step in this process, inherited by
#: the worker's children.
ELECTION_ENV = "LEADERFEED_WORKER_ELECTION"
#: How long a process that found no lease segment waits before looking again.
_ATTACH_RETRY_SECONDS = 1.0


class RunningWorker(Protocol):
    """What the worker step registers while it runs (``bootstep.WorkerLeadership``)."""

    @property
    def app(self) -> Any: ...

    @property
    def owner_pid(self) -> int: ...

    @property
    def settings(self) -> LeaderfeedSettings: ...

    @property
    def feed(self) -> LeaderFeed: ...

    @property
    def shared(self) -> SharedLease: ...

    def report(self) -> dict[str, Any]: ...

    def request_leadership(
        self, election: str | None = None, *, nominate: bool = True
    ) -> dict[str, Any]: ...

    def hand_over_to(
        self, node: str, election: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]: ...


_running: weakref.WeakKeyDictionary[Any, RunningWorker] = weakref.WeakKeyDictionary()
_settings_cache: weakref.WeakKeyDictionary[Any, tuple[int, LeaderfeedSettings | None]] = (
    weakref.WeakKeyDictionary()
)
#: Parent segments this process attached to, by (our PID, parent PID, election): a forked
#: child starts with its parent's entries, which the PIDs in the key set aside.
_attached: dict[tuple[int, int, str], SharedLease] = {}
#: Where no segment was found: when to look again.
_absent_until: dict[tuple[int, int, str], float] = {}
_lock = threading.Lock()
#: This process's lease as a test decides it (see :func:`simulate`); None: the real lookup.
_simulated: Callable[[], Lease | None] | None = None


def simulate(source: Callable[[], Lease | None] | None) -> None:
    """Make :func:`current_lease` and :func:`leader_admission` return ``source()`` in this
    process, for every app (None: back to the worker's segment). For tests only."""
    global _simulated  # noqa: PLW0603 - one switch per process, as the segment is
    _simulated = source


def register(worker: RunningWorker) -> None:
    with _lock:
        _running[worker.app] = worker


def unregister(worker: RunningWorker) -> None:
    with _lock:
        if _running.get(worker.app) is worker:
            del _running[worker.app]


def _app_object(app: Any) -> Any:
    if app is None:
        app = current_app
    unwrap = getattr(app, "_get_current_object", None)  # celery.current_app is a Proxy
    return unwrap() if callable(unwrap) else app


def _running_here(app: Any) -> RunningWorker | None:
    worker = _running.get(app)
    if worker is None or worker.owner_pid != os.getpid():
        return None
    return worker


def worker_feed(app: Any = None) -> LeaderFeed | None:
    """The live feed of the worker step running in this process (None elsewhere)."""
    worker = _running_here(_app_object(app))
    return None if worker is None else worker.feed


def worker_settings(app: Any = None) -> LeaderfeedSettings | None:
    """The leaderfeed settings of ``app`` as this worker uses them, resolved once per process;
    None if they cannot be resolved (no leaderfeed configured)."""
    app = _app_object(app)
    worker = _running_here(app)
    if worker is not None:
        return worker.settings
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


def running_worker(app: Any = None) -> RunningWorker | None:
    """The worker step running in this process (None elsewhere)."""
    return _running_here(_app_object(app))


def leadership_report(app: Any = None) -> dict[str, Any] | None:
    """What ``celery inspect leaderfeed`` returns for this worker (None: no step runs here)."""
    worker = _running_here(_app_object(app))
    return None if worker is None else worker.report()


# -- reading the lease ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    """The segment this process reads its worker's lease from."""

    segment: SharedLease
    #: True in the worker's main process (it wrote the segment), False in one of its children.
    in_worker: bool

    def read(self) -> Lease | None:
        # A child trusts only what its current parent wrote: once its worker died, nothing.
        return self.segment.read(os.getpid() if self.in_worker else os.getppid())


def _lease_source(app: Any) -> _Source | None:
    worker = _running_here(app)
    if worker is not None:
        return _Source(worker.shared, in_worker=True)
    election = os.environ.get(ELECTION_ENV)
    if not election:
        settings = worker_settings(app)
        if settings is None:
            return None
        election = settings.name
    segment = _parent_segment(election)
    return None if segment is None else _Source(segment, in_worker=False)


def _parent_segment(election: str) -> SharedLease | None:
    """The lease segment of this process's parent (a prefork child or the beat process)."""
    key = (os.getpid(), os.getppid(), election)
    with _lock:
        segment = _attached.get(key)
        if segment is not None:
            return segment
        now = time.monotonic()
        if now < _absent_until.get(key, -1.0):
            return None
        segment = SharedLease.attach(election, key[1])
        if segment is None:
            _absent_until[key] = now + _ATTACH_RETRY_SECONDS
            return None
        _absent_until.pop(key, None)
        _attached[key] = segment
        return segment


def current_lease(app: Any = None) -> Lease | None:
    """This worker's lease, from whichever of its processes asks (see the module docstring)."""
    simulated = _simulated
    if simulated is not None:
        return simulated()
    source = _lease_source(_app_object(app))
    return None if source is None else source.read()


@contextlib.contextmanager
def leader_admission(app: Any = None) -> Iterator[Lease | None]:
    """This worker's lease; while it says leader, the block runs holding the admission lock.

    A warm shutdown marks the lease follower and then waits for that lock (see
    ``WorkerLeadership.hand_over``), so a body that starts inside the block while the lease
    says leader is one the worker waits for before it resigns. A lease that says follower is
    yielded without the lock: followers never touch it.
    """
    simulated = _simulated
    if simulated is not None:
        yield simulated()
        return
    source = _lease_source(_app_object(app))
    if source is None:
        yield None
        return
    lease = source.read()
    if lease is None or not lease.valid():
        yield lease
        return
    with source.segment.admission() as admitted:
        yield source.read() if admitted else None  # read again: a handover may have begun
