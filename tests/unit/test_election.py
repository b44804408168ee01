"""The election state machine, on a fake clock: deterministic, no threads, no sleeps."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import pytest

from celery_leaderfeed.backends.base import RecordChanged
from celery_leaderfeed.engine.election import Resignation, Role
from celery_leaderfeed.record import LeaderRecord, Observation
from tests.unit.simulation import TIMING, Cluster, Member, roles

HEARTBEAT = TIMING.heartbeat_interval
LOW, HIGH = TIMING.election_timeout_min, TIMING.election_timeout_max


def settle(cluster: Cluster) -> str:
    cluster.run_until(lambda: cluster.leader() is not None, HIGH + 1)
    leader = cluster.leader()
    assert leader is not None
    cluster.run(0.1)
    return leader.id


# -- electing ----------------------------------------------------------------------------------


def test_a_fresh_store_is_claimed_at_once_but_acted_on_after_one_timeout() -> None:
    # A missing record may mean the store was wiped under a live leader, whose lease ran from
    # before the wipe: acting one election_timeout_min after the claim outlasts it.
    cluster = Cluster(2)
    started = cluster.clock()
    cluster.tick()
    claimed = cluster.store.observe("sim").record
    assert claimed is not None and claimed.holder is not None
    assert claimed.term == int(cluster.store.clock() * 1000)  # the store clock, in ms
    assert cluster.leader() is None
    took = cluster.run_until(lambda: cluster.leader() is not None, HIGH + 1)
    assert LOW - 0.02 <= took <= LOW + 0.02
    member = cluster.member(claimed.holder)
    assert roles(member) == [Role.LEADER]  # announced once, when it may act
    assert cluster.store.operations.count(("sim", "claim")) == 1
    assert started < cluster.clock()


def test_the_leader_renews_every_heartbeat_and_followers_never_claim() -> None:
    cluster = Cluster(3)
    settle(cluster)
    renewals_before = cluster.store.operations.count(("sim", "renew"))
    cluster.run(20 * HEARTBEAT)
    renewals = cluster.store.operations.count(("sim", "renew")) - renewals_before
    assert 19 <= renewals <= 21
    assert len(cluster.terms()) == 1
    assert cluster.store.operations.count(("sim", "claim")) == 1


def test_follower_timeouts_are_random_within_the_bounds() -> None:
    cluster = Cluster(12, seed=7)
    settle(cluster)
    waits = [
        m.election.election_at - m.election.observed_at  # type: ignore[operator]
        for m in cluster.members
        if not m.leading
    ]
    assert all(LOW <= wait <= HIGH for wait in waits)
    assert len({round(wait, 6) for wait in waits}) == len(waits)


# -- losing the leader ---------------------------------------------------------------------------


def test_a_crashed_leader_is_replaced_within_the_maximum_election_timeout() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    cluster.members.remove(old)  # crashed: no more ticks, no resignation
    took = cluster.run_until(lambda: cluster.leader() is not None, HIGH + 1)
    assert took <= HIGH + HEARTBEAT
    assert len(cluster.terms()) == 2


def test_a_paused_leader_stops_acting_before_anyone_can_claim() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    old.paused = True
    lost_at = cluster.run_until(lambda: not old.leading, LOW + 1)
    claimed_at = cluster.run_until(lambda: cluster.leader() is not None, HIGH + 1) + lost_at
    assert lost_at <= TIMING.lease_duration
    assert claimed_at > lost_at
    # Resumed, it learns it lost without ever acting again, and does not fight back.
    old.paused = False
    cluster.run(5 * HEARTBEAT)
    assert not old.leading
    assert roles(old) == [Role.LEADER, Role.FOLLOWER]
    assert len(cluster.terms()) == 2


def test_a_leader_that_cannot_reach_the_store_stops_within_its_lease() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    with cluster.store.outage():
        lost = cluster.run_until(lambda: not old.leading, LOW + 1)
        assert lost <= TIMING.lease_duration + 0.02
        cluster.run(3 * HIGH)  # nobody can claim during the outage
        assert cluster.leader() is None
    heartbeat_errors = [args for name, args in old.events if name == "heartbeat_error"]
    assert heartbeat_errors
    # Back: the old holder knows it stopped acting on its own term, so it claims at once.
    took = cluster.run_until(lambda: cluster.leader() is not None, 2 * HEARTBEAT)
    assert took <= 1.5 * HEARTBEAT
    assert len(cluster.terms()) == 2


def test_a_wiped_store_keeps_terms_rising_and_waits_out_the_old_lease() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    old_term = old.election.lease.term
    assert old_term is not None
    cluster.run(2.5)
    cluster.store.put_raw("sim", None)  # e.g. Redis restarted without persistence
    wiped_at = cluster.clock()
    stopped = cluster.run_until(lambda: not old.leading, 2 * HEARTBEAT)
    assert stopped <= HEARTBEAT + 0.02  # its next renewal finds the record gone
    cluster.run_until(lambda: cluster.leader() is not None, LOW + 2 * HEARTBEAT)
    assert cluster.clock() - wiped_at >= LOW
    record = cluster.store.observe("sim").record
    assert record is not None and record.term > old_term


def test_a_wipe_within_a_heartbeat_of_a_claim_cannot_make_two_leaders() -> None:
    # A member that slept through a claim sees "missing" before and after a second wipe:
    # the same state, yet a leader came and went in between. Found by the randomized test.
    cluster = Cluster(3)
    sleeper = cluster.members[2]
    sleeper.paused = True
    cluster.run_until(lambda: cluster.leader() is not None, HIGH + 1)
    cluster.store.put_raw("sim", None)
    cluster.run(0.3)
    sleeper.paused = False
    cluster.run(2 * HIGH)
    cluster.store.put_raw("sim", None)
    cluster.run(2 * HIGH)
    assert len(cluster.terms()) >= 2
    assert cluster.terms() == sorted(cluster.terms())


# -- handing over ----------------------------------------------------------------------------------


def test_shutdown_resigns_and_a_follower_claims_in_the_same_instant() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    old.election.shutdown()
    assert not old.leading
    cluster.members.remove(old)
    cluster.tick()  # no time passes: the feed carries the vacancy
    assert cluster.leader() is not None
    assert len(cluster.terms()) == 2


def test_elect_from_a_bystander_hands_over_to_the_nominee() -> None:
    cluster = Cluster(3)
    leader = settle(cluster)
    nominee, bystander = (m for m in cluster.members if m.id != leader)
    bystander.election.request_leader(nominee.id, cluster.clock())
    took = cluster.run_until(lambda: nominee.leading, HEARTBEAT)
    assert took <= 0.05
    assert [m.id for m in cluster.leaders()] == [nominee.id]
    assert not cluster.member(leader).leading
    cluster.run(3 * HIGH)
    assert cluster.leader() is nominee


def test_the_resign_hook_runs_while_the_lease_is_valid_and_before_the_resign() -> None:
    cluster = Cluster(3)
    leader = cluster.member(settle(cluster))
    nominee = next(m for m in cluster.members if m is not leader)
    seen: list[tuple[Resignation, bool, str | None]] = []

    def hook(resignation: Resignation) -> None:
        record = cluster.store.observe("sim").record
        assert record is not None
        seen.append((resignation, leader.election.lease.valid(cluster.clock()), record.holder))

    leader.election.before_resign = hook
    term = leader.election.lease.term
    leader.election.request_leader(nominee.id, cluster.clock())
    cluster.run_until(lambda: nominee.leading, HEARTBEAT)
    assert [(r.term, r.nominee, valid, holder) for r, valid, holder in seen] == [
        (term, nominee.id, True, leader.id)  # still leading, nothing written yet
    ]
    resignation = seen[0][0]
    assert resignation.deadline <= leader.election.clock() + HEARTBEAT
    nominee.election.before_resign = hook
    nominee.election.shutdown()  # stop() resigns too
    assert [r.nominee for r, _, _ in seen] == [nominee.id, None]


def test_elect_self_when_following() -> None:
    cluster = Cluster(2)
    leader = settle(cluster)
    other = next(m for m in cluster.members if m.id != leader)
    other.election.request_leader(other.id, cluster.clock())
    cluster.run_until(lambda: other.leading, HEARTBEAT)
    assert len(cluster.terms()) == 2


def test_a_nominee_that_never_takes_over_delays_the_others_by_one_timeout_only() -> None:
    cluster = Cluster(3)
    leader = cluster.member(settle(cluster))
    leader.election.request_leader("ghost", cluster.clock())
    cluster.tick()
    assert cluster.leader() is None
    took = cluster.run_until(lambda: cluster.leader() is not None, 2 * LOW + 1)
    assert LOW <= took <= LOW + 0.05


def test_a_claim_over_a_lost_record_is_not_handed_over_before_it_waited() -> None:
    # Found by the randomized test: m1 claims a wiped record, is asked to hand over to m3
    # before its wait is over, and a vacancy would have let m3 act beside the leader the
    # store forgot. It steps down without resigning; the record times out instead.
    cluster = Cluster(3)
    forgotten = cluster.member(settle(cluster))
    forgotten.deaf = True  # keeps acting on its lease, unaware
    cluster.store.put_raw("sim", None)
    forgotten.paused = True  # ... and its renewals do not tell it either
    wiped_at = cluster.clock()
    cluster.run_until(
        lambda: any(
            m.election.lease.role is Role.LEADER for m in cluster.members if m is not forgotten
        ),
        HEARTBEAT,
    )
    claimant = next(
        m for m in cluster.members if m.election.lease.role is Role.LEADER and m is not forgotten
    )
    nominee = next(m for m in cluster.members if m not in (forgotten, claimant))
    claimant.election.request_leader(nominee.id, cluster.clock())
    cluster.tick()
    assert claimant.election.lease.role is Role.FOLLOWER
    assert cluster.store.operations.count(("sim", "resign")) == 0
    successor = cluster.run_until(
        lambda: any(m.leading for m in cluster.members if m is not forgotten), 2 * HIGH + 1
    )
    assert successor >= LOW  # nobody else acted while the forgotten lease could still run
    assert cluster.clock() - wiped_at >= LOW


# -- what the feed says ----------------------------------------------------------------------------


def test_late_feed_events_are_ignored() -> None:
    cluster = Cluster(2)
    settle(cluster)
    follower = next(m for m in cluster.members if not m.leading)
    known = follower.election.known
    assert known is not None and known.record is not None
    stale = LeaderRecord("ghost", "tok", known.record.term, known.record.version - 1)
    follower.election.feed_event(RecordChanged(Observation(stale)), cluster.clock())
    assert follower.election.known == known


def test_a_late_feed_event_saying_missing_is_checked_not_believed() -> None:
    # A feed's "missing" or "foreign" state carries no version: it may predate a claim the
    # member already saw. Believing it demoted fresh leaders (seen with RethinkDB's point feed).
    cluster = Cluster(2)
    leader = cluster.member(settle(cluster))
    reads = leader.election.stats.reads
    leader.election.feed_event(RecordChanged(Observation(None)), cluster.clock())
    leader.election.feed_event(RecordChanged(Observation(None, corrupt=True)), cluster.clock())
    cluster.run(HEARTBEAT)
    assert leader.leading
    assert roles(leader) == [Role.LEADER]
    assert leader.election.stats.reads == reads + 1  # it went and looked instead


def test_a_follower_whose_feed_went_deaf_notices_on_its_failed_claim() -> None:
    cluster = Cluster(2)
    settle(cluster)
    follower = next(m for m in cluster.members if not m.leading)
    follower.deaf = True
    cluster.run_until(lambda: follower.feed_went_quiet, HIGH + 1)
    assert len(cluster.terms()) == 1


def test_losing_a_claim_race_is_not_taken_for_a_deaf_feed() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    cluster.members.remove(old)  # crashed
    first, second = cluster.members
    cluster.run(HEARTBEAT)
    # Both time the leader out at once; the second claims before its feed shows the first's.
    now = cluster.clock()
    first.election.election_at = second.election.election_at = now
    first.step(now)
    second.step(now)
    assert first.election.stats.claims == second.election.stats.claims == 1
    assert first.election.stats.claims_won + second.election.stats.claims_won == 1
    assert not first.feed_went_quiet and not second.feed_went_quiet


def test_a_leader_whose_feed_went_deaf_notices_its_own_silence() -> None:
    cluster = Cluster(1)
    leader = cluster.member(settle(cluster))
    leader.deaf = True
    took = cluster.run_until(lambda: leader.feed_went_quiet, 5 * HEARTBEAT)
    # 3 heartbeats after the last renewal it heard, which came at most one heartbeat earlier.
    assert 2 * HEARTBEAT <= took <= 3 * HEARTBEAT + 0.05
    assert leader.leading


def test_a_broken_feed_falls_back_to_reading_every_heartbeat() -> None:
    cluster = Cluster(2)
    leader = cluster.member(settle(cluster))
    follower = next(m for m in cluster.members if m is not leader)
    follower.election.feed_lost(cluster.clock())
    follower.subscription = None
    follower.paused = False
    reads = [0]
    original = follower.backend._read

    def counting_read() -> Observation:
        reads[0] += 1
        return original()

    follower.backend._read = counting_read  # type: ignore[method-assign]
    follower.pump = lambda: None  # type: ignore[method-assign]  # stays unsubscribed
    cluster.run(5 * HEARTBEAT)
    assert 4 <= reads[0] <= 6
    # Reads keep it informed: it never times the live leader out.
    cluster.run(3 * HIGH)
    assert len(cluster.terms()) == 1


# -- foreign data ----------------------------------------------------------------------------------


def test_foreign_data_is_no_leader_warned_once_and_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="celery_leaderfeed")
    cluster = Cluster(2)
    cluster.store.put_raw("sim", '{"format": "somebody-else", "holder": 3}')
    took = cluster.run_until(lambda: cluster.leader() is not None, HIGH + 1)
    assert LOW - 0.02 <= took <= LOW + 0.05  # claimed at once, acted on one timeout later
    cluster.run(HIGH)
    warnings = [r for r in caplog.records if "not one of ours" in r.getMessage()]
    assert len(warnings) == 2  # one per member, not one per tick
    assert len(cluster.terms()) == 1


def test_foreign_data_over_a_live_record_demotes_its_leader_at_the_next_renewal() -> None:
    cluster = Cluster(2)
    old = cluster.member(settle(cluster))
    cluster.store.put_raw("sim", "[1, 2, 3]")
    overwritten_at = cluster.clock()
    stopped = cluster.run_until(lambda: not old.leading, 2 * HEARTBEAT)
    assert stopped <= HEARTBEAT + 0.02
    cluster.run_until(lambda: cluster.leader() is not None, LOW + 2 * HEARTBEAT)
    assert cluster.clock() - overwritten_at >= LOW
    assert len(cluster.terms()) == 2


# -- randomized faults -----------------------------------------------------------------------------


FAULTS = ("pause", "outage", "deaf", "crash", "elect", "wipe", "quiet")


@pytest.mark.parametrize("seed", range(100))
def test_random_pauses_outages_crashes_and_lossy_feeds_never_make_two_leaders(seed: int) -> None:
    cluster = random_faults(seed, FAULTS)
    assert cluster.terms() == sorted(cluster.terms())


@pytest.mark.parametrize("seed", range(100))
def test_random_rollbacks_of_the_store_never_make_two_leaders(seed: int) -> None:
    # "rollback" sends the store back to any earlier state, revealed by a new history marker
    # or (after a delayed restart) not; "rollback-soon" to one of the last few states, where
    # the leaders that the store forgot are most likely still acting.
    cluster = random_faults(seed, (*FAULTS, "rollback", "rollback-soon", "rollback-soon"))
    assert cluster.terms() == sorted(cluster.terms())


def random_faults(
    seed: int,
    faults: tuple[str, ...],
    rounds: int = 30,
    on_fault: Callable[[Cluster, str, random.Random], bool] | None = None,
) -> Cluster:
    """Inflict ``rounds`` random faults on four members; every tick checks safety.
    ``on_fault`` may inflict a fault of its own (it returns True when it did)."""
    rng = random.Random(seed)
    cluster = Cluster(4, seed=seed)
    for _ in range(rounds):
        fault = rng.choice(faults)
        victim = rng.choice(cluster.members)
        if on_fault is not None and on_fault(cluster, fault, rng):
            pass
        elif fault == "pause":
            victim.paused = True
            cluster.run(rng.uniform(0, 2 * HIGH))
            victim.paused = False
        elif fault == "outage":
            with cluster.store.outage():
                cluster.run(rng.uniform(0, 2 * HIGH))
        elif fault == "deaf":
            victim.deaf = not victim.deaf
        elif fault == "crash" and len(cluster.members) > 1:
            cluster.members.remove(victim)
            cluster.add(f"{victim.id}-r{rng.randrange(1000)}")
        elif fault == "elect":
            target = rng.choice(cluster.members)
            victim.election.request_leader(target.id, cluster.clock())
        elif fault == "wipe":
            cluster.store.put_raw("sim", None)
        elif fault.startswith("rollback"):
            states = cluster.history[-4:] if fault == "rollback-soon" else cluster.history
            new_history = rng.random() < 0.7
            down = rng.choice([0.0, rng.uniform(0, TIMING.lease_duration)])
            # Whoever leads may be slow to hear of it while others act on the old state.
            slow = [m for m in cluster.members if m.leading and rng.random() < 0.5]
            cluster.roll_back(rng.choice(states), new_history=new_history, down=down)
            for member in slow:
                member.paused = True
            cluster.run(rng.uniform(0, TIMING.lease_duration))
            for member in slow:
                member.paused = False
        cluster.run(rng.uniform(0, HIGH))
    # Liveness once the faults stop (deaf feeds heal by resubscribing or by failed claims).
    for member in cluster.members:
        member.deaf = False
        member.paused = False
    cluster.run_until(lambda: cluster.leader() is not None, 3 * HIGH)
    return cluster


# -- a store that goes back in time ----------------------------------------------------------------


def rolled_back_past_a_claim(
    cluster: Cluster, *, resume_before: bool, new_history: bool
) -> tuple[Member, Member]:
    """The leader pauses past its lease, another member claims the next term and acts, then the
    store returns to the state from before that claim. Returns (old leader, successor)."""
    old = cluster.member(settle(cluster))
    cluster.run(0.5)
    before = cluster.store.snapshot()
    old.paused = True
    cluster.run_until(lambda: any(m.leading for m in cluster.members if m is not old), HIGH + 2)
    successor = cluster.leaders()[0]
    cluster.run(0.5)
    if resume_before:
        old.paused = False
        cluster.run(0.3)
    cluster.roll_back(before, new_history=new_history, down=0.4)
    # The successor still holds its lease and is slow to hear of the rollback (a busy engine
    # thread, a read that takes its time); the old leader wakes up first.
    successor.paused = True
    old.paused = False
    cluster.run(0.5)
    successor.paused = False
    cluster.run(3 * HIGH)
    return old, successor


def rolled_back_to_a_vacancy(cluster: Cluster, *, new_history: bool) -> Member:
    """The leader resigns; the store is snapshotted while the record is vacant, a follower
    claims it and acts, then the store returns to the vacant record. Returns the successor."""
    old = cluster.member(settle(cluster))
    old.election.shutdown()
    cluster.members.remove(old)
    vacant = cluster.store.snapshot()
    cluster.run_until(lambda: cluster.leader() is not None, HEARTBEAT)
    successor = cluster.leaders()[0]
    cluster.run(0.5)
    cluster.roll_back(vacant, new_history=new_history, down=0.4)
    successor.paused = True  # slow to hear of it, as above
    cluster.run(0.5)
    successor.paused = False
    cluster.run(3 * HIGH)
    return successor


@pytest.mark.parametrize("new_history", [True, False], ids=["new-history", "delayed-restart"])
@pytest.mark.parametrize("resume_before", [True, False], ids=["resumed-before", "resumed-after"])
def test_a_store_rolled_back_past_a_claim_never_gives_one_term_two_holders(
    resume_before: bool, new_history: bool
) -> None:
    # Before the rule, the old leader found its own token, claimed at once and minted the
    # successor's term again, acting while the successor still did. check() fails at once.
    cluster = Cluster(3)
    old, successor = rolled_back_past_a_claim(
        cluster, resume_before=resume_before, new_history=new_history
    )
    assert cluster.leader() is not None
    assert cluster.terms() == sorted(cluster.terms())
    assert old.id != successor.id


@pytest.mark.parametrize("new_history", [True, False], ids=["new-history", "delayed-restart"])
def test_a_restored_vacancy_is_not_acted_on_while_the_last_leader_may_act(
    new_history: bool,
) -> None:
    cluster = Cluster(3)
    successor = rolled_back_to_a_vacancy(cluster, new_history=new_history)
    if new_history:
        # The successor stops at its next renewal; whoever claims the restored vacancy acts
        # only one election timeout after its claim.
        record = cluster.store.observe("sim").record
        assert record is not None and not record.vacant
    assert cluster.leader() is not None
    assert successor.election.max_term <= max(cluster.terms())


def test_a_member_that_saw_a_later_version_distrusts_an_older_one() -> None:
    # No history marker (e.g. MongoDB rolled back): whoever saw the versions the store forgot
    # knows, and waits one timeout before acting on the older record.
    cluster = Cluster(2)
    old = cluster.member(settle(cluster))
    other = next(m for m in cluster.members if m is not old)
    old.election.shutdown()
    cluster.members.remove(old)
    vacant = cluster.store.snapshot()
    cluster.run_until(lambda: other.leading, HEARTBEAT)
    cluster.run(0.5)
    cluster.store.restore(vacant, new_history=False)
    cluster.run_until(lambda: other.election.known is not None and other.election.known.suspect, 1)
    assert not other.leading  # it saw its own claim and renewals vanish
    took = cluster.run_until(lambda: other.leading, LOW + 2 * HEARTBEAT)
    assert took >= LOW - 2 * HEARTBEAT


def test_a_claim_over_a_record_of_an_earlier_history_gets_a_term_from_the_clock() -> None:
    cluster = Cluster(2)
    old_term = cluster.member(settle(cluster)).election.lease.term
    before = cluster.store.snapshot()
    cluster.run(5.0)
    restored_at_ms = int(cluster.store.clock() * 1000)
    cluster.store.restore(before, new_history=True)

    def new_term() -> bool:
        leader = cluster.leader()
        return leader is not None and leader.election.lease.term != old_term

    took = cluster.run_until(new_term, LOW + 3 * HEARTBEAT)
    assert took >= LOW  # claimed at once, acted on one timeout later
    record = cluster.store.observe("sim").record
    assert record is not None and record.term >= restored_at_ms
