"""Claims brought forward by a store's report that the holder's session ended (holder_gone).

On the simulated cluster (fake clock, memory backend, safety checked at every tick): the report
is delivered at any moment - while the leader is alive, paused, cut off or gone - since a
session can end under a live process. The claim may come at once; the store fences the old
term from then on; the lease is valid only when a normal wait would have ended.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from celery_leaderfeed.engine.election import Role
from celery_leaderfeed.record import WriteResult
from harness.fault_checker import violations
from tests.unit.simulation import TIMING, Cluster, Member, roles
from tests.unit.test_election import FAULTS, HIGH, LOW, random_faults, settle


def report_gone(cluster: Cluster, term: int) -> None:
    """Every member's watch sees the session holding ``term`` end."""
    for member in cluster.members:
        member.election.holder_gone(term, cluster.clock())


def current_term(cluster: Cluster) -> int:
    record = cluster.store.observe("sim").record
    assert record is not None
    return record.term


def claimed_early(cluster: Cluster, old: Member) -> Member:
    cluster.run_until(lambda: current_term(cluster) != old.election.lease.term, 0.05)
    record = cluster.store.observe("sim").record
    assert record is not None and record.holder is not None
    return cluster.member(record.holder)


def test_a_crashed_holder_is_claimed_at_once_fenced_at_once_valid_after_the_wait() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    term = current_term(cluster)
    cluster.members.remove(old)  # kill -9: no more ticks; its session ended with it
    seen_renewal = {m.id: m.election.observed_at for m in cluster.members}
    report_gone(cluster, term)
    new = claimed_early(cluster, old)
    lease = new.election.lease
    assert lease.role is Role.LEADER and lease.term != term
    now = cluster.clock()
    assert lease.fenced(now) and not lease.valid(now)
    # Valid once the old lease has certainly run out: as if it had waited the minimum.
    assert lease.valid_from == pytest.approx(seen_renewal[new.id] + LOW)
    assert roles(new) == []  # not announced before it may act
    took = cluster.run_until(lambda: cluster.leader() is new, LOW + 0.1)
    assert took <= LOW + 0.02
    assert roles(new) == [Role.LEADER]


def test_the_old_term_is_fenced_out_of_the_store_by_the_early_claim() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    old_lease = old.election.lease
    assert old.backend.write_entry(old_lease.term, old_lease.token, "e", None, "1")  # type: ignore[arg-type]
    old.paused = True  # alive, its session terminated by an operator
    report_gone(cluster, current_term(cluster))
    new = claimed_early(cluster, old)
    assert old.leading, "the old leader's lease still runs"
    assert not new.leading, "the new leader may not act on its lease yet"
    assert new.election.lease.fenced(cluster.clock())
    # The old leader, still within its lease, cannot write what the store fences any more.
    refused = old.backend.write_entry(old_lease.term, old_lease.token, "e", "1", "2")  # type: ignore[arg-type]
    assert refused is False
    new_lease = new.election.lease
    assert new.backend.write_entry(new_lease.term, new_lease.token, "e", "1", "2")  # type: ignore[arg-type]
    old.paused = False
    cluster.run(2 * HIGH)  # the cluster checks at every tick: never two valid leases
    assert cluster.leader() is new


def test_a_stale_report_claims_nothing_and_a_vacancy_is_claimed_as_a_vacancy() -> None:
    cluster = Cluster(3)
    leader = cluster.member(settle(cluster))
    term = current_term(cluster)
    claims = cluster.store.operations.count(("sim", "claim"))
    report_gone(cluster, term - 1)  # about a term that has passed
    cluster.run(LOW / 2)
    assert cluster.store.operations.count(("sim", "claim")) == claims
    assert cluster.leader() is leader
    # A resign releases the lock too: the vacancy it wrote is claimed, valid at once.
    leader.election.shutdown()
    cluster.members.remove(leader)
    report_gone(cluster, term)
    took = cluster.run_until(lambda: cluster.leader() is not None, 0.1)
    lease = cluster.leaders()[0].election.lease
    assert lease.valid_from == lease.acquired_at == lease.fenced_from
    assert took <= 0.02


def test_a_renewal_not_yet_heard_costs_one_more_early_claim_not_the_fast_path() -> None:
    cluster = Cluster(3)
    old = cluster.member(settle(cluster))
    term = current_term(cluster)
    for member in cluster.members:
        if member is not old:
            member.deaf = True  # the holder's last renewal has not reached them
    cluster.run(TIMING.heartbeat_interval + 0.01)  # one renewal they did not hear
    cluster.members.remove(old)
    report_gone(cluster, term)
    for member in cluster.members:
        member.deaf = False
    new = claimed_early(cluster, old)
    assert new.election.lease.fenced(cluster.clock())
    refused = sum(m.election.stats.claims - m.election.stats.claims_won for m in cluster.members)
    assert refused >= 1  # an early claim with the version before the unheard renewal
    cluster.run_until(lambda: cluster.leader() is new, LOW + 0.1)


def test_a_holder_that_keeps_renewing_is_left_to_the_normal_wait_after_three_claims() -> None:
    """Its session was replaced (terminated, then reconnected) and it renews before each
    early claim lands: after three, the follower waits as usual."""
    cluster = Cluster(2)
    leader = cluster.member(settle(cluster))
    follower = next(m for m in cluster.members if m is not leader)
    real_claim = follower.backend.claim
    refused = 0

    def claim_after_a_renewal(*args: Any, **kwargs: Any) -> WriteResult:
        nonlocal refused
        leader.election.renew_at = cluster.clock()
        leader.election.step(cluster.clock())
        refused += 1
        return real_claim(*args, **kwargs)

    follower.backend.claim = claim_after_a_renewal  # type: ignore[method-assign]
    report_gone(cluster, current_term(cluster))
    cluster.run(LOW / 2)
    assert refused == 3
    assert cluster.leader() is leader
    assert follower.election.election_at is not None
    assert follower.election.election_at >= follower.election.observed_at + LOW


@pytest.mark.parametrize("seed", range(60))
def test_random_faults_with_sessions_ending_at_any_moment_never_make_two_leaders(
    seed: int,
) -> None:
    cluster = random_faults(seed, (*FAULTS, "session-ends", "session-ends"), on_fault=_session)
    assert cluster.terms() == sorted(cluster.terms())


def _session(cluster: Cluster, fault: str, rng: random.Random) -> bool:
    """``session-ends``: the leader's session ends while it lives - paused at that moment or
    not, resumed soon or late - and every follower is told."""
    if fault != "session-ends":
        return False
    leader = cluster.leader()
    if leader is None:
        return True
    pause = rng.random() < 0.6
    leader.paused = pause
    report_gone(cluster, current_term(cluster))
    cluster.run(rng.choice([0.01, rng.uniform(0, LOW), rng.uniform(LOW, 2 * HIGH)]))
    leader.paused = False
    return True


@pytest.mark.parametrize("trial", range(20))
def test_a_paused_holder_resumed_within_its_lease_is_checked_independently(trial: int) -> None:
    """The dangerous case, judged by the fault suite's checker on the recorded acts: the
    leader pauses, its session ends, a follower claims early, the leader resumes while its
    lease still runs."""
    cluster = Cluster(3, seed=3000 + trial, strict=False)
    old = cluster.member(settle(cluster))
    rng = random.Random(trial)
    cluster.run(rng.uniform(0, TIMING.heartbeat_interval))
    old.paused = True
    report_gone(cluster, current_term(cluster))
    cluster.run(rng.uniform(0.01, TIMING.lease_duration))
    old.paused = False
    cluster.run(2 * HIGH)
    assert violations(cluster.acts()) == []
    assert len(cluster.terms()) >= 2
