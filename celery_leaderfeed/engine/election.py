"""The election state machine: every decision about who leads is made here, on one thread.

:class:`Election` owns no thread and never sleeps. Its owner feeds it what the change feed
delivered (:meth:`Election.observe`, :meth:`Election.feed_lost`, ...) and calls
:meth:`Election.step` with the current time; ``step`` does whatever is due (renew, claim, read)
and returns the seconds until it next needs to run. With an injected clock the whole machine is
testable without threads or sleeps.

Safety rests on these rules:

* every change of holder is a compare-and-set in the store that raises the term;
* a follower claims only after it has seen the record unchanged for a random time of at least
  ``election_timeout_min`` on its own monotonic clock (or right away once a leader resigned);
* a leader stops acting on its own when ``lease_duration`` (shorter than any follower's wait)
  has passed since it *sent* its last acknowledged renewal - whatever the feed says or not;
* a record that is missing or not ours (the store lost it, or never had it) is claimed at once,
  but the new leader acts only ``election_timeout_min`` after sending its claim: any leader the
  store forgot has stopped by then, because its lease was renewed before the loss;
* so is a record the store may have *rolled back* - one written under an earlier history of the
  store (``Observation.suspect``: a restart from a snapshot, a promoted replica), one older than
  a version this member saw, or one a claim found suspect: a vacancy or our own token in it
  proves nothing, since the store may have forgotten a later claim whose holder still acts;
* a store that can tell when the holder's session ended (:meth:`Election.holder_gone`, a
  PostgreSQL advisory lock) only brings the claim forward. The claim fences the store at once,
  so work the store fences (the beat's per-occurrence claims) may start then
  (``Lease.fenced_from``); the lease itself becomes valid only ``election_timeout_min`` after
  the follower last saw the old term renewed, as if it had waited: a session can end while its
  process still acts (terminated, paused, cut off).

What the owner learns back: :meth:`Election.step` returns a :class:`Turn` (when to step again,
and whether the change feed went quiet); :attr:`Election.revision` rises with every change of
the lease, of the record's known state or of the announced role, so the owner notifies its
observers once per turn however many changes the turn made; listeners' events go out through
``emit`` as :class:`~.listeners.Event` members with their arguments.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import Backend, DataChanged, FeedEvent, RecordChanged
from ..errors import BackendUnavailable
from ..record import LeaderRecord, Observation, WriteResult
from ..timing import Timing
from .listeners import Emit, Event
from .retry import Backoff, FaultLog, refused_pace, report_interval

__all__ = ["FOLLOWING", "Election", "Lease", "Resignation", "Role", "Stats", "Turn"]

logger = logging.getLogger("celery_leaderfeed")


class Role(str, enum.Enum):
    """What a member is in the election (kept apart from its lifecycle status)."""

    FOLLOWER = "follower"
    LEADER = "leader"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Lease:
    """What a member may do, as one immutable snapshot that other threads can read.

    The one type for "may act as leader until ``deadline`` under ``term``": the engine makes
    it, a worker shares it with its processes (``celery.shared_lease``), and the beat scheduler
    fences its claims with it. ``leader_id`` and ``member_id`` are filled where a lease leaves
    its feed (the engine's own leases leave them None: the feed knows both).
    """

    role: Role
    #: The term held while leader: the fencing token to pass to anything the leader writes.
    term: int | None = None
    token: str | None = None
    #: Monotonic time at which the leader must stop acting unless a renewal is acknowledged.
    deadline: float = -math.inf
    #: Monotonic time the term was acquired.
    acquired_at: float | None = None
    #: Monotonic time from which the leader may act: later than ``acquired_at`` only after a
    #: claim over a missing or foreign record, where an unseen earlier leader may still act.
    valid_from: float = -math.inf
    #: The member the record named as leader when this snapshot was taken (None: vacant).
    leader_id: str | None = None
    #: The member this lease belongs to.
    member_id: str | None = None
    #: Monotonic time from which work the store fences with this term may start; None: from
    #: ``valid_from``. Earlier only after a claim brought forward by :meth:`Election.holder_gone`.
    fenced_from: float | None = None

    def valid(self, now: float | None = None) -> bool:
        """True while this member may act as leader at monotonic time ``now`` (default: now).

        ``time.monotonic`` is one clock for every process on the machine, so a lease read from
        another process is judged here the same way.
        """
        moment = time.monotonic() if now is None else now
        return self.role is Role.LEADER and self.valid_from <= moment < self.deadline

    #: The same check, by the name ``LeaderFeed.is_leader`` and task code use.
    is_leader = valid

    def fenced(self, now: float | None = None) -> bool:
        """True while this member may do work that the store fences with its term - writes
        the store refuses once another term began, like the beat's per-occurrence claims.

        The same as :meth:`valid` except after a claim brought forward by a store's report
        that the old holder's session ended: then from the claim's acknowledgement, while
        :meth:`valid` waits until the old holder has certainly stopped.
        """
        moment = time.monotonic() if now is None else now
        start = self.valid_from if self.fenced_from is None else self.fenced_from
        return self.role is Role.LEADER and start <= moment < self.deadline


FOLLOWING = Lease(Role.FOLLOWER)

#: Claims one holder_gone report may bring forward: a claim refused because the holder's
#: renewal had not reached us yet is made again at once, but a holder that keeps renewing
#: (its session was replaced, its process lives) is left to the normal wait.
_EARLY_CLAIMS = 3


def _no_event(event: Event, /, *args: object) -> None:
    del event, args


@dataclass(slots=True)
class Stats:
    """Counters of what this member did, for metrics and benchmarks (engine thread writes)."""

    claims: int = 0  #: claims sent
    claims_won: int = 0  #: claims the store accepted (terms this member started)
    renewals: int = 0  #: renewals the store acknowledged
    renewals_failed: int = 0  #: renewals that errored or were refused
    reads: int = 0  #: reads of the record (start-up, after subscribing, while the feed is down)
    feed_events: int = 0  #: events the change feed delivered
    resubscribes: int = 0  #: subscriptions lost or dropped as deaf


@dataclass(frozen=True, slots=True)
class Turn:
    """What one :meth:`Election.step` leaves to its owner."""

    #: Seconds until the election needs to step again.
    delay: float
    #: The change feed seems deaf - a leader stopped hearing its own renewals, or a refused claim
    #: showed renewals it never delivered: drop the subscription and subscribe again.
    feed_quiet: bool = False


@dataclass(frozen=True, slots=True)
class Resignation:
    """A leader about to give leadership up of its own accord (``elect`` of another member,
    ``stop``): what the owner's ``before_resign`` hook is told, while the lease is still valid
    and before the resign is written. A lease that runs out is never announced in advance."""

    #: The term being given up.
    term: int
    #: The member leadership is handed to; None: whoever claims first (``stop``).
    nominee: str | None
    #: Monotonic time by which the hook must return: the engine neither renews nor resigns
    #: while it runs.
    deadline: float


def _no_hook(resignation: Resignation, /) -> None:
    del resignation


@dataclass(frozen=True, slots=True)
class _PendingResign:
    term: int
    token: str
    nominee: str | None


class Election:
    """One member's view of one election. Not thread-safe: drive it from one thread."""

    def __init__(
        self,
        backend: Backend,
        member_id: str,
        token: str,
        timing: Timing,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        emit: Emit = _no_event,
        faults: FaultLog | None = None,
        before_resign: Callable[[Resignation], None] = _no_hook,
    ) -> None:
        self.backend = backend
        self.member_id = member_id
        self.token = token
        self.timing = timing
        self.clock = clock
        self.rng = rng or random.Random()
        self.emit = emit
        #: Called before a voluntary resign (see :class:`Resignation`).
        self.before_resign = before_resign

        self.lease: Lease = FOLLOWING
        #: Rises with every change of the lease, of the record's known state or of the announced
        #: role: the owner notifies observers when it moved since it last looked.
        self.revision = 0
        self.known: Observation | None = None
        #: Local time at which ``known`` last changed: followers time the leader out from here.
        self.observed_at = -math.inf
        self.max_term = 0
        self.max_version = 0
        self.announced_leader: str | None = None
        #: Whether the current lease (if any) was announced; the first one is never pending.
        self._announced = True
        #: Whether our last lease ever became valid. Only then does a record still naming us
        #: prove that nobody acts: a claim over a lost record may not have waited out yet a
        #: leader the store forgot.
        self._acted_on_last_term = False
        self._warned_corrupt = False
        #: The term whose holder's session the store reported ended (holder_gone), while this
        #: follower may still claim over it early, and how many early claims it has left.
        self._gone_term: int | None = None
        self._early_claims = 0
        #: Whether the planned claim is one holder_gone brought forward.
        self._claim_is_early = False

        self.election_at: float | None = None
        self.renew_at: float | None = None
        self.read_at: float | None = None
        self.nominate_at: float | None = None
        self.resign_at: float | None = None
        self.requested_leader: str | None = None
        self._pending_resign: _PendingResign | None = None

        self.feed_up = False
        self.feed_seen_at = -math.inf
        self.stopping = False
        self.stats = Stats()
        #: Failed store calls are retried after this backoff (one heartbeat at most while the
        #: store may heal, slower while it refuses us) and logged without flooding.
        self._retry = Backoff(
            self.rng,
            timing.heartbeat_interval / 4,
            timing.heartbeat_interval,
            refused_cap=refused_pace(timing),
        )
        self.faults = faults or FaultLog(
            logger, f"leaderfeed {backend.name!r}", report_interval(timing)
        )

    # -- what the owner reports ----------------------------------------------------------------

    @property
    def role(self) -> Role:
        return self.lease.role

    @property
    def watched_term(self) -> int | None:
        """The term whose holder's session a follower watches (see ``holder_gone``): the
        record's, while it names another member and is not in doubt."""
        known = self.known
        record = known.record if known is not None else None
        if (
            self.lease.role is Role.LEADER
            or known is None
            or known.suspect
            or record is None
            or record.vacant
            or record.token == self.token
        ):
            return None
        return record.term

    def bootstrap(self) -> None:
        """Read the record once before anything else happens (raises BackendUnavailable)."""
        self.observe(self.backend.read(), self.clock(), authoritative=True)

    def feed_started(self, now: float) -> None:
        """A subscription is open: read once to cover anything written before it opened."""
        self.feed_up = True
        self.feed_seen_at = now
        if self.known is not None:  # the first read comes from bootstrap()
            self.read_at = now

    def feed_lost(self, now: float) -> None:
        """The subscription broke: read the record at the heartbeat interval until it is back."""
        self.stats.resubscribes += 1
        self.feed_up = False
        self.read_at = now

    def feed_event(self, event: FeedEvent, now: float) -> None:
        self.stats.feed_events += 1
        self.feed_seen_at = now
        if isinstance(event, RecordChanged):
            self.observe(event.observation, now, authoritative=False)
        elif isinstance(event, DataChanged):
            self.emit(Event.CHANGE, event.change)

    def holder_gone(self, term: int, now: float) -> None:
        """The store reports that the session holding ``term``'s liveness lock ended (see
        :class:`~celery_leaderfeed.backends.base.HolderWatch`): claim now instead of waiting.

        It proves nothing about the holder's process, which may still act (its session was
        terminated, it is paused): the claim is fenced at once, the lease valid only when a
        normal wait would have ended (see :meth:`_claim`). Ignored unless the record still
        names that term's holder, someone else, in a record not in doubt.
        """
        record = self.known.record if self.known is not None else None
        if self.lease.role is Role.LEADER or self.stopping or record is None or record.term != term:
            return
        self._gone_term = term
        self._early_claims = _EARLY_CLAIMS
        self._schedule_election(now)

    def request_leader(self, member_id: str, now: float) -> None:
        """Start handing leadership to ``member_id`` (``elect``)."""
        self.requested_leader = member_id
        self.nominate_at = now

    # -- observing the store -------------------------------------------------------------------

    def observe(self, observation: Observation, now: float, *, authoritative: bool) -> None:
        """Take in a state of the record.

        Replies to reads and writes are authoritative: they show the store as it is. Feed events
        may arrive late or twice, so one that is not newer than what is known is dropped.
        """
        record = observation.record
        known = self.known.record if self.known is not None else None
        if record is None and not authoritative:
            # A feed saying the record is gone or foreign carries no version to order it by:
            # it may predate a claim already seen. Read the store instead of believing it.
            self.read_at = now
            return
        if (
            authoritative
            and record is not None
            and record.version < self.max_version
            and not observation.suspect
        ):
            # The store answers with a state older than one it showed us: it went back in time
            # without saying so. Whoever held the versions it forgot may still act.
            observation = dataclasses.replace(observation, suspect=True)
        if record is not None:
            self.max_term = max(self.max_term, record.term)
            self.max_version = max(self.max_version, record.version)
            if not authoritative and known is not None and record.version <= known.version:
                return
        if observation.same_state(self.known):
            self.known = observation  # keep the newest store clock
            return
        self.known = observation
        self.observed_at = now
        self.revision += 1
        self._report_foreign(observation)

        if self.lease.role is Role.LEADER:
            if observation.suspect:
                self._step_down(now, "the store may have gone back to an earlier state")
            elif record is None or record.token != self.token or record.term != self.lease.term:
                holder = "nobody" if record is None else repr(record.holder)
                self._step_down(now, f"the record now names {holder}")
            elif record.nominee is not None and record.nominee != self.member_id:
                self.request_leader(record.nominee, now)
        pending = self._pending_resign
        if pending is not None and (record is None or record.token != pending.token):
            self._pending_resign = None
            self.resign_at = None
        if self.requested_leader is not None:
            self.nominate_at = now
        self._announce_leader()
        self._schedule_election(now)

    def _report_foreign(self, observation: Observation) -> None:
        if observation.corrupt and not self._warned_corrupt:
            self._warned_corrupt = True
            logger.warning(
                "leaderfeed %r: the leader record in %s is not one of ours; treating it as "
                "no leader until it is replaced",
                self.backend.name,
                self.backend.display_url,
            )
        elif not observation.corrupt:
            self._warned_corrupt = False

    def _announce_leader(self) -> None:
        holder = self.known.leader_id if self.known is not None else None
        if holder != self.announced_leader:
            self.announced_leader = holder
            term = self.known.record.term if self.known and self.known.record else None
            logger.info(
                "leaderfeed %r: leader is %s (term %s)",
                self.backend.name,
                holder or "vacant",
                term,
            )
            self.emit(Event.NEW_LEADER, holder)

    def _schedule_election(self, now: float) -> None:
        """When this follower will try to claim, given what it knows."""
        if self.lease.role is Role.LEADER or self.stopping or self.known is None:
            self.election_at = None
            return
        self._claim_is_early = False
        record = self.known.record
        low, high = self.timing.election_timeout_min, self.timing.election_timeout_max
        nominee_elsewhere = (
            record is not None and record.nominee is not None and record.nominee != self.member_id
        )
        if record is None or self.known.suspect:
            # Missing, foreign or possibly rolled back: waiting would prove nothing (the store
            # may have forgotten a live leader); the claim instead takes effect one timeout
            # later (see _claim).
            self.election_at = now
        elif record.vacant:
            # A resigned leader stopped acting before it wrote this: claim at once, but let a
            # nominee go first.
            self.election_at = self.observed_at + low if nominee_elsewhere else now
        elif (
            record.token == self.token
            and self._acted_on_last_term
            and self._pending_resign is None
            and not nominee_elsewhere
        ):
            # Our own term, on which we already stopped acting: nobody else can be acting on it.
            self.election_at = now
        elif self._may_claim_early(record, nominee_elsewhere):
            self._claim_is_early = True  # the holder's session ended: the lease waits the rest
            self.election_at = now
        else:
            wait = self.rng.uniform(low, high) + (low if nominee_elsewhere else 0.0)
            self.election_at = self.observed_at + wait

    def _may_claim_early(self, record: LeaderRecord, nominee_elsewhere: bool) -> bool:
        """Whether ``record`` names a holder whose session the store reported ended."""
        return (
            self._gone_term == record.term
            and self._early_claims > 0
            and record.token != self.token
            and not nominee_elsewhere
        )

    # -- the clock -------------------------------------------------------------------------------

    def step(self, now: float) -> Turn:
        """Do whatever is due at ``now``; say when something is due again (see :class:`Turn`)."""
        lease = self.lease
        feed_quiet = False
        if lease.role is Role.LEADER and now >= lease.deadline:
            self._step_down(now, "no renewal was acknowledged within the lease")
        self._announce_leadership(now)
        if self._due(self.resign_at, now):
            self._resign_pending()
        if self.lease.role is Role.LEADER and self._due(self.renew_at, now):
            self._renew()
        if self._due(self.nominate_at, now):
            self._pursue_request(self.clock())
        if self.lease.role is Role.FOLLOWER and self._due(self.election_at, now):
            feed_quiet = self._claim()
        if self._due(self.read_at, now):
            self._read()
        feed_quiet = self._check_feed(self.clock()) or feed_quiet
        return Turn(self._next_due(self.clock()), feed_quiet)

    @staticmethod
    def _due(at: float | None, now: float) -> bool:
        return at is not None and at <= now

    def _next_due(self, now: float) -> float:
        deadlines = [
            at
            for at in (
                self.renew_at if self.lease.role is Role.LEADER else None,
                self.lease.deadline if self.lease.role is Role.LEADER else None,
                self.lease.valid_from if not self._announced else None,
                self.election_at if self.lease.role is Role.FOLLOWER else None,
                self.read_at,
                self.nominate_at,
                self.resign_at,
            )
            if at is not None
        ]
        if not deadlines:
            return self.timing.heartbeat_interval
        return max(0.0, min(deadlines) - now)

    # -- store operations ------------------------------------------------------------------------

    def _store_failed(self, what: str, exc: BackendUnavailable) -> float:
        """Report a failed store call; the seconds to wait before trying again."""
        self.faults.failed(self.clock(), what, exc)
        return self._retry.next(exc)

    def _store_answered(self) -> None:
        self._retry.reset()
        self.faults.recovered(self.clock(), "the store")

    def _renew(self) -> None:
        lease = self.lease
        assert lease.term is not None and lease.token is not None
        sent = self.clock()
        try:
            result = self.backend.renew(lease.term, lease.token)
        except BackendUnavailable as exc:
            self.stats.renewals_failed += 1
            self.emit(Event.HEARTBEAT_ERROR, exc)
            self.renew_at = self.clock() + self._store_failed("renewal", exc)
            return
        self._store_answered()
        if result.ok:
            self.stats.renewals += 1
            self._set_lease(dataclasses.replace(lease, deadline=sent + self.timing.lease_duration))
            self.renew_at = sent + self.timing.heartbeat_interval
        self.observe(result.observation, self.clock(), authoritative=True)
        if not result.ok:
            self.stats.renewals_failed += 1
        if not result.ok and self.lease.role is Role.LEADER:
            self._step_down(self.clock(), "the store refused the renewal")

    def _set_lease(self, lease: Lease) -> None:
        self.lease = lease
        self.revision += 1

    def _claim(self) -> bool:
        """Claim the record; True if the refusal shows that the feed went deaf."""
        known = self.known
        assert known is not None
        early = self._claim_is_early
        if early:
            self._early_claims -= 1
        sent = self.clock()
        self.stats.claims += 1
        try:
            result = self.backend.claim(
                known.version,
                self.member_id,
                self.token,
                min_term=self.max_term + 1,
                min_version=self.max_version + 1,
            )
        except BackendUnavailable as exc:
            self.emit(Event.HEARTBEAT_ERROR, exc)
            self.election_at = self.clock() + self._store_failed("claim", exc)
            return False
        self._store_answered()
        now = self.clock()
        feed_quiet = False
        if result.ok:
            self.stats.claims_won += 1
            # Over a record the store lost or may have rolled back, a leader it forgot may act
            # until its lease runs out; that lease was renewed before the loss, so before this
            # claim was sent. The store says whether the record it replaced was suspect: our
            # own view of it may predate the rollback.
            doubt = known.record is None or known.suspect or result.over_suspect
            if doubt:
                valid_from = sent + self.timing.election_timeout_min
                self._become_leader(result, sent, valid_from, valid_from)
            elif early:
                # Its holder's last renewal reached us at observed_at (the claim compared that
                # version), so its lease ends before observed_at + election_timeout_min; the
                # store refuses its fenced writes from now on.
                valid_from = max(sent, self.observed_at + self.timing.election_timeout_min)
                self._become_leader(result, sent, valid_from, now)
            else:
                self._become_leader(result, sent, sent, sent)
        elif self._missed_renewals(known, result.observation, sent):
            # The same leader renewed long ago and the feed never said so: it has gone deaf.
            feed_quiet = True
        if not result.ok and result.observation.same_state(known):
            self.known = None  # unchanged yet refused (e.g. new foreign data): start waiting again
        self.observe(result.observation, now, authoritative=True)
        return feed_quiet

    def _missed_renewals(self, known: Observation, current: Observation, sent: float) -> bool:
        """Whether a refused claim shows renewals the feed should have delivered.

        A record that moved to another holder or term is a lost race with another claimer,
        not a deaf feed: only renewals of the very term we saw count.
        """
        seen, now = known.record, current.record
        return (
            self.feed_up
            and seen is not None
            and now is not None
            and (now.term, now.token) == (seen.term, seen.token)
            and now.version > seen.version
            and sent - self.observed_at >= self.timing.heartbeat_interval
        )

    def _become_leader(
        self, result: WriteResult, sent: float, valid_from: float, fenced_from: float
    ) -> None:
        record = result.observation.record
        assert record is not None
        self._set_lease(
            Lease(
                Role.LEADER,
                record.term,
                self.token,
                sent + self.timing.lease_duration,
                sent,
                valid_from,
                fenced_from=fenced_from,
            )
        )
        self.renew_at = sent + self.timing.heartbeat_interval
        self.election_at = None
        self._announced = False
        self._gone_term = None
        if fenced_from < valid_from:
            logger.info(
                "leaderfeed %r: %s claimed term %d as its holder's session ended; fenced work "
                "starts now, leader-only work in %.2f s",
                self.backend.name,
                self.member_id,
                record.term,
                valid_from - self.clock(),
            )
        elif valid_from > sent:
            logger.info(
                "leaderfeed %r: %s claimed a lost or possibly rolled-back record (term %d); "
                "acting in %.2f s",
                self.backend.name,
                self.member_id,
                record.term,
                valid_from - sent,
            )
        self._announce_leadership(self.clock())

    def _announce_leadership(self, now: float) -> None:
        """Tell the world once the lease is valid (at once, or after a claim's delay)."""
        lease = self.lease
        if self._announced or lease.role is not Role.LEADER or now < lease.valid_from:
            return
        self._announced = True
        self.revision += 1
        logger.info(
            "leaderfeed %r: %s became leader (term %s)",
            self.backend.name,
            self.member_id,
            lease.term,
        )
        self.emit(Event.NEW_STATE, Role.LEADER, lease.term)

    def _read(self) -> None:
        self.stats.reads += 1
        try:
            observation = self.backend.read()
        except BackendUnavailable as exc:
            self.read_at = self.clock() + self._store_failed("reading the record", exc)
            return
        self._store_answered()
        self.read_at = None if self.feed_up else self.clock() + self.timing.heartbeat_interval
        self.observe(observation, self.clock(), authoritative=True)

    def _pursue_request(self, now: float) -> None:
        """Move towards ``requested_leader`` leading."""
        target = self.requested_leader
        self.nominate_at = None
        if target is None:
            return
        if self.lease.role is Role.LEADER:
            self.requested_leader = None
            if target != self.member_id:
                self._hand_over(now, target)
            return
        known = self.known
        record = known.record if known is not None else None
        if known is None or record is None:
            return  # no valid record to carry a nomination; retried when one appears
        if record.token == self.token and target == self.member_id:
            self.requested_leader = None  # our own stale term: _schedule_election claims at once
            return
        vacant_for_target = record.vacant and record.nominee in (None, target)
        if record.holder == target or (vacant_for_target and target == self.member_id):
            self.requested_leader = None  # done, or _schedule_election claims at once
            return
        if record.nominee == target:
            self.requested_leader = None
            return
        try:
            result = self.backend.nominate(known.version, target)
        except BackendUnavailable as exc:
            self.nominate_at = self.clock() + self._store_failed(f"nominating {target}", exc)
            return
        self._store_answered()
        if result.ok:
            self.requested_leader = None
        self.observe(result.observation, self.clock(), authoritative=True)

    def _hand_over(self, now: float, nominee: str | None) -> None:
        """Stop acting, then leave the record vacant for ``nominee`` (or anyone)."""
        lease = self.lease
        assert lease.term is not None and lease.token is not None
        if now < lease.valid_from:
            # A vacancy tells followers that nobody acts. Until our claim over a lost record
            # has waited out any leader the store forgot, that would be untrue: let the record
            # time out instead (followers' waits already cover the rest of ours).
            self._step_down(now, "stepping down without resigning: the claim is still waiting")
            return
        # The owner stops its leader-only work first (a worker stops taking the leader queue);
        # the lease stays valid meanwhile, so it is bounded by the lease and one heartbeat.
        deadline = min(now + self.timing.heartbeat_interval, lease.deadline)
        self.before_resign(Resignation(lease.term, nominee, deadline))
        now = self.clock()
        self._pending_resign = _PendingResign(lease.term, lease.token, nominee)
        self._step_down(now, f"handing over to {nominee}" if nominee else "resigning")
        self._resign_pending()

    def _resign_pending(self) -> None:
        pending = self._pending_resign
        self.resign_at = None
        if pending is None:
            return
        try:
            result = self.backend.resign(pending.term, pending.token, pending.nominee)
        except BackendUnavailable as exc:
            self.resign_at = self.clock() + self._store_failed("resigning", exc)
            return
        self._store_answered()
        self._pending_resign = None
        self.observe(result.observation, self.clock(), authoritative=True)
        self._schedule_election(self.clock())

    def _step_down(self, now: float, reason: str) -> None:
        if self.lease.role is not Role.LEADER:
            return
        term = self.lease.term
        announced, self._announced = self._announced, True
        self._acted_on_last_term = announced
        self._set_lease(FOLLOWING)
        self.renew_at = None
        logger.info(
            "leaderfeed %r: %s is follower again (term %s): %s",
            self.backend.name,
            self.member_id,
            term,
            reason,
        )
        if announced:  # a leader that never got to act was never announced
            self.emit(Event.NEW_STATE, Role.FOLLOWER, term)
        self._schedule_election(now)

    def _check_feed(self, now: float) -> bool:
        """A leader hears its own renewals on the feed; silence means the feed went deaf."""
        lease = self.lease
        if (
            self.feed_up
            and lease.role is Role.LEADER
            and lease.acquired_at is not None
            and now - max(self.feed_seen_at, lease.acquired_at) > 3 * self.timing.heartbeat_interval
        ):
            self.feed_seen_at = now
            return True
        return False

    # -- stopping ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop for good: a leader stops acting, then resigns so a follower takes over at once."""
        self.stopping = True
        self.election_at = None
        self.nominate_at = None
        if self.lease.role is Role.LEADER:
            self._hand_over(self.clock(), None)
        elif self._pending_resign is not None:
            self._resign_pending()
        self.resign_at = None
