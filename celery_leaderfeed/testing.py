"""Testing your own leader-only code: a pytest plugin, loaded by the ``pytest11`` entry point
whenever celery-leaderfeed is installed (``-p no:celery_leaderfeed`` turns it off).

Fixtures (each function-scoped; nothing happens unless a test asks for one):

``leaderfeed``
    A :class:`Leadership`: this process's lease as the test decides it, for every app - what
    ``@leader_only`` bodies (eager, ``apply()``, direct calls, or a worker thread in this
    process), :func:`~celery_leaderfeed.current_term` and ``current_lease()`` see - backed by a
    ``memory://`` store of its own that holds the matching leader record. Until the test calls
    ``lead()`` or ``follow()`` no lease is visible, as outside a worker
    (``leaderfeed_eager_policy`` then decides).
``leaderfeed_leader``
    The same, leading under term ``leaderfeed_term``.
``leaderfeed_follower``
    The same, following another member that leads under ``leaderfeed_term``.
``leaderfeed_term``
    ``1``; override it in a ``conftest.py`` or ``@pytest.mark.parametrize("leaderfeed_term",
    [42])`` to choose the term.
``leaderfeed_store``
    The :class:`~celery_leaderfeed.backends.memory.MemoryStore` behind it: ``with
    leaderfeed_store.outage(): ...`` makes every store call fail, and a leader's lease lapse
    (it may not act until the store is back), as a real leader's does once its lease runs out.

Point an app at the store with :meth:`Leadership.configure` when the code under test reads the
store itself (``celery leaderfeed status``, a scheduler).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from .backends.memory import MemoryStore, memory_store
from .engine.election import Lease, Role
from .errors import BackendUnavailable, ConfigurationError
from .record import LeaderRecord

__all__ = ["Leadership"]

#: The member this process plays in the election of a :class:`Leadership`.
MEMBER = "pytest@leaderfeed"


class Leadership:
    """This process's lease as a test decides it, and the ``memory://`` store behind it.

    ``lead(term)``, ``follow(leader, term)``, ``lapse()`` and ``release()`` change it at once for
    every thread of the process; the store's record follows, so fenced writes under the lease's
    term and token succeed exactly while it leads.
    """

    def __init__(self, name: str | None = None, member_id: str = MEMBER) -> None:
        self.name = name or f"pytest-{uuid.uuid4().hex[:12]}"
        self.url = f"memory://{self.name}"
        self.store: MemoryStore = memory_store(self.url)
        self.member_id = member_id
        self._lease: Lease | None = None
        self._version = 0

    # -- what the test decides ---------------------------------------------------------------

    def lead(self, term: int | None = None) -> Lease:
        """Lead under ``term`` (default: one above the last term given here, else 1)."""
        term = self._term(term)
        token = uuid.uuid4().hex
        self._write(LeaderRecord(self.member_id, token, term, self._next_version()))
        self._lease = Lease(
            Role.LEADER,
            term=term,
            token=token,
            deadline=math.inf,
            acquired_at=time.monotonic(),
            leader_id=self.member_id,
            member_id=self.member_id,
        )
        return self._lease

    def follow(self, leader: str = "leader@elsewhere", term: int | None = None) -> Lease:
        """Follow ``leader``, which leads under ``term`` (default as for :meth:`lead`)."""
        if leader == self.member_id:
            raise ConfigurationError(f"follow({leader!r}): that is this process; use lead()")
        term = self._term(term)
        self._write(LeaderRecord(leader, uuid.uuid4().hex, term, self._next_version()))
        self._lease = Lease(Role.FOLLOWER, leader_id=leader, member_id=self.member_id)
        return self._lease

    def lapse(self) -> Lease:
        """Still named leader, but the lease ran out (a paused or cut-off leader): no body runs."""
        lease = self._lease
        if lease is None or lease.role is not Role.LEADER:
            raise ConfigurationError("lapse() needs a lease that leads: call lead() first")
        self._lease = dataclasses.replace(lease, deadline=-math.inf)
        return self._lease

    def release(self) -> None:
        """No lease visible again, as outside a worker."""
        self._lease = None

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The store fails every call while the block runs; a leader may not act meanwhile."""
        with self.store.outage():
            yield

    # -- what the code under test sees -------------------------------------------------------

    @property
    def lease(self) -> Lease | None:
        """The lease as every lookup in this process sees it right now."""
        lease = self._lease
        if lease is not None and lease.role is Role.LEADER and not self._store_answers():
            return dataclasses.replace(lease, deadline=-math.inf)
        return lease

    @property
    def term(self) -> int | None:
        lease = self._lease
        return lease.term if lease is not None and lease.role is Role.LEADER else None

    def configure(self, app: Any) -> Any:
        """Point ``app``'s election at this store (``leaderfeed_backend``, ``leaderfeed_name``)."""
        app.conf.update(leaderfeed_backend=self.url, leaderfeed_name=self.name)
        return app

    # -- internals ----------------------------------------------------------------------------

    def _term(self, term: int | None) -> int:
        if term is None:
            known = self._known_term()
            return 1 if known is None else known + 1
        if isinstance(term, bool) or not isinstance(term, int) or term < 1:
            raise ConfigurationError(f"a term is an integer >= 1, got {term!r}")
        return term

    def _known_term(self) -> int | None:
        with contextlib.suppress(BackendUnavailable):
            record = self.store.observe(self.name).record
            return None if record is None else record.term
        return None

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _write(self, record: LeaderRecord) -> None:
        stamped = dataclasses.replace(record, renewed_at=self.store.clock())
        self.store.put_raw(self.name, stamped.to_json())

    def _store_answers(self) -> bool:
        try:
            self.store.observe(self.name)
        except BackendUnavailable:
            return False
        return True

    def close(self) -> None:
        self._lease = None
        with contextlib.suppress(BackendUnavailable):
            self.store.set_available(True)
        self.store.put_raw(self.name, None)


@pytest.fixture
def leaderfeed() -> Iterator[Leadership]:
    """This process's lease as the test decides it (see the module docstring)."""
    from .celery.worker_lease import simulate  # noqa: PLC0415 - needs the celery extra

    leadership = Leadership()
    simulate(lambda: leadership.lease)
    try:
        yield leadership
    finally:
        simulate(None)
        leadership.close()


@pytest.fixture
def leaderfeed_term() -> int:
    """The term ``leaderfeed_leader`` and ``leaderfeed_follower`` use (override to choose)."""
    return 1


@pytest.fixture
def leaderfeed_leader(leaderfeed: Leadership, leaderfeed_term: int) -> Leadership:
    """This process leads under ``leaderfeed_term``."""
    leaderfeed.lead(leaderfeed_term)
    return leaderfeed


@pytest.fixture
def leaderfeed_follower(leaderfeed: Leadership, leaderfeed_term: int) -> Leadership:
    """This process follows another member leading under ``leaderfeed_term``."""
    leaderfeed.follow(term=leaderfeed_term)
    return leaderfeed


@pytest.fixture
def leaderfeed_store(leaderfeed: Leadership) -> MemoryStore:
    """The memory store behind ``leaderfeed`` (``with leaderfeed_store.outage(): ...``)."""
    return leaderfeed.store
