"""A deterministic cluster of Election state machines on the memory backend and a fake clock.

Nothing sleeps: time moves only when a test says so. After every tick the cluster checks the
safety property itself, from outside the members: at no instant do two members hold a valid
lease, and no term ever has two holders. The cluster also keeps the store's earlier states, so
a test can send the store back in time (:meth:`Cluster.roll_back`).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from celery_leaderfeed.backends.memory import MemoryBackend, MemoryStore, StoreState
from celery_leaderfeed.backends.transitions import CLOCK_LAG_MS
from celery_leaderfeed.engine.election import Election, Role
from celery_leaderfeed.errors import BackendUnavailable
from celery_leaderfeed.timing import Timing
from harness.fault_checker import Act

TIMING = Timing(heartbeat_interval=1.0, election_timeout_min=3.0, election_timeout_max=4.0)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Member:
    """One member: an Election plus its feed, which the cluster pumps by hand."""

    id: str
    election: Election
    backend: MemoryBackend
    clock: FakeClock
    events: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    paused: bool = False
    deaf: bool = False  # its feed silently delivers nothing
    subscription: object | None = None
    feed_went_quiet: bool = False  # a step ever judged its feed deaf

    def subscribe(self) -> None:
        try:
            self.subscription = self.backend.subscribe()
        except BackendUnavailable:
            self.subscription = None
            return
        self.election.feed_started(self.clock())

    def pump(self) -> None:
        if self.subscription is None:
            self.subscribe()
            return
        try:
            events = self.subscription.poll(0)  # type: ignore[attr-defined]
        except BackendUnavailable:
            self.subscription = None
            self.election.feed_lost(self.clock())
            return
        if self.deaf:
            return
        for event in events:
            self.election.feed_event(event, self.clock())

    def step(self, now: float) -> None:
        if self.election.step(now).feed_quiet:
            self.feed_went_quiet = True

    def tick(self) -> None:
        if self.paused:
            return
        self.pump()
        self.step(self.clock())

    @property
    def leading(self) -> bool:
        return self.election.lease.valid(self.clock())


class Cluster:
    def __init__(
        self, size: int, *, timing: Timing = TIMING, seed: int = 0, strict: bool = True
    ) -> None:
        #: Whether a breach of safety fails at once; if not, ``acting`` records it for a checker.
        self.strict = strict
        self.clock = FakeClock()
        self.store = MemoryStore(clock=lambda: self.clock() + 1.7e9)
        self.timing = timing
        self.rng = random.Random(seed)
        self.members: list[Member] = []
        #: (time, member id, term) for every tick at which a member held a valid lease.
        self.acting: list[tuple[float, str, int]] = []
        self._holders: dict[int, str] = {}
        #: Every state the store held, oldest first (a state is kept when a write changed it).
        self.history: list[StoreState] = [self.store.snapshot()]
        self._writes_seen = 0
        for index in range(size):
            self.add(f"m{index}")

    def add(self, member_id: str) -> Member:
        backend = MemoryBackend("memory://sim", name="sim", options={"store": self.store})
        member = Member(member_id, None, backend, self.clock)  # type: ignore[arg-type]
        member.election = Election(
            backend,
            member_id,
            uuid.uuid4().hex,
            self.timing,
            clock=self.clock,
            rng=random.Random(self.rng.random()),
            emit=lambda event, *args: member.events.append((event, args)),
        )
        member.subscribe()
        member.election.bootstrap()
        self.members.append(member)
        return member

    def member(self, member_id: str) -> Member:
        return next(m for m in self.members if m.id == member_id)

    def leaders(self) -> list[Member]:
        return [m for m in self.members if m.leading]

    def leader(self) -> Member | None:
        leaders = self.leaders()
        return leaders[0] if leaders else None

    def tick(self) -> None:
        for member in self.members:
            member.tick()
        self.check()
        if len(self.store.operations) != self._writes_seen:
            self._writes_seen = len(self.store.operations)
            self.history.append(self.store.snapshot())

    def roll_back(self, state: StoreState, *, new_history: bool, down: float = 0.0) -> None:
        """Send the store back to ``state``, as a restart from an old snapshot or a promoted
        replica would, after ``down`` seconds in which nobody reaches it.

        With ``new_history`` the store reveals it (Redis' run id and replication id change).
        Without, nothing can reveal it: the store then comes back only after the remedy the
        documentation prescribes for such stores, a delayed restart - unreachable for longer
        than any lease plus ``CLOCK_LAG_MS``.
        """
        if not new_history:
            down = max(down, self.timing.election_timeout_min + CLOCK_LAG_MS / 1000 + 0.05)
        with self.store.outage():
            self.run(down)
            self.store.restore(state, new_history=new_history)

    def run(self, seconds: float, dt: float = 0.01) -> None:
        end = self.clock() + seconds
        while self.clock() < end:
            self.clock.advance(dt)
            self.tick()

    def run_until(self, condition, timeout: float, dt: float = 0.01) -> float:  # type: ignore[no-untyped-def]
        """Advance until ``condition()``; return the simulated seconds it took."""
        start = self.clock()
        while not condition():
            assert self.clock() - start <= timeout, f"not reached within {timeout} simulated s"
            self.clock.advance(dt)
            self.tick()
        return self.clock() - start

    def check(self) -> None:
        now = self.clock()
        leaders = self.leaders()
        assert len(leaders) <= 1 or not self.strict, f"two leaders at t={now}: {leaders}"
        for member in leaders:
            term = member.election.lease.term
            assert term is not None
            self.acting.append((now, member.id, term))
            holder = self._holders.setdefault(term, member.id)
            assert holder == member.id or not self.strict, (
                f"term {term} held by {holder} and {member.id}"
            )

    def acts(self) -> list[Act]:
        """What the members did, in the independent fault checker's terms."""
        return [Act(at, member, term) for at, member, term in self.acting]

    def terms(self) -> list[int]:
        return sorted({term for _, _, term in self.acting})


def roles(member: Member) -> list[Role]:
    return [args[0] for name, args in member.events if name == "new_state"]  # type: ignore[misc]
