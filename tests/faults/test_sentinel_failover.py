"""``SENTINEL FAILOVER`` under five real member processes, with the independent checker.

The group is a master, a replica and three sentinels; the members reach the master through
kombu's ``sentinel://...;sentinel://...`` URL. The promoted replica has a new replication id,
so the record it holds is suspect: the leader's next renewal is refused there and the next
leader acts one ``election_timeout_min`` after its claim. Meanwhile the old master stays a
master, with its clients, for about ten seconds - the members must follow the sentinels'
latest word, not that connection, or one would keep renewing there while another claims on
the new master. The checker must find no overlapping acts and no term with two holders, and a
leader must act on a new term within the promotion time + ``election_timeout_max`` + 1 s (the
issue's target) plus the suite's scheduling slack.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from harness.fault_checker import tenures
from harness.helpers import wait_until
from harness.servers.redis_sentinel import SentinelGroup
from tests.faults.cluster import HEARTBEAT, HIGH, SLACK, MemberCluster
from tests.fixtures.redis_production import SentinelFaultServer
from tests.fixtures.redis_server import TEST_PASSWORD

pytestmark = pytest.mark.faults

FIRST_LEADER_WITHIN = 10.0
#: Trials of the lossy failover (1 in CI; 20 in the run the issue reports).
TRIALS = int(os.environ.get("LEADERFEED_SENTINEL_TRIALS", "1"))


def test_sentinel_failover_moves_the_election_to_the_new_master(tmp_path: Path) -> None:
    group = SentinelGroup(TEST_PASSWORD).start()
    cluster = MemberCluster(SentinelFaultServer(group), tmp_path)
    try:
        cluster.start_all()
        cluster.leader(FIRST_LEADER_WITHIN)
        cluster.run_for(2 * HIGH)
        terms_before = {t.term for t in tenures(cluster.acts())}
        old_master = group.master
        asked_at = time.monotonic()
        group.failover()
        promoted_in = time.monotonic() - asked_at
        new_term = wait_until(
            lambda: [a for a in cluster.acts() if a.at > asked_at and a.term > max(terms_before)],
            promoted_in + HIGH + 1 + SLACK,
            interval=0.01,
            message="an act on a new term after the failover",
        )[0]
        cluster.run_for(3 * HIGH)
        found = cluster.violations()
        assert not found, "\n".join(found) + "\n" + cluster.logs()
        print(
            f"\nSENTINEL FAILOVER: promoted in {promoted_in:.2f} s, first act on a new term "
            f"{new_term.at - asked_at:.2f} s after the command"
        )
        # The election lives on the new master now; the old one (a replica soon) has it too
        # only by replication.
        assert group.master is not old_master
        record = group.master.client().get(f"leaderfeed:{{{cluster.name}}}:leader")
        assert record is not None and str(new_term.term).encode() in record
    finally:
        cluster.close()
        group.close()


def lossy_failover(directory: Path) -> list[str]:
    """The replica is cut off, the leader paused past its lease while another member claims
    (a write the replica never gets), then ``SENTINEL FAILOVER`` promotes the replica that
    missed it; the paused leader resumes after. Returns the checker's violations."""
    group = SentinelGroup(TEST_PASSWORD).start()
    cluster = MemberCluster(SentinelFaultServer(group), directory, size=3)
    try:
        cluster.start_all()
        cluster.leader(FIRST_LEADER_WITHIN)
        cluster.run_for(2 * HEARTBEAT)
        group.cut_replica()
        leader = cluster.leader(HIGH + SLACK)
        stopped_at = time.monotonic()
        cluster.signal(leader, signal.SIGSTOP)
        successor = cluster.wait_for_act_after(stopped_at, HIGH + HEARTBEAT + SLACK, not_by=leader)
        cluster.run_for(2 * HEARTBEAT)
        missed = group.replica.client().get(f"leaderfeed:{{{cluster.name}}}:leader")
        assert missed is not None and str(successor.term).encode() not in missed
        group.failover()
        cluster.signal(leader, signal.SIGCONT)
        cluster.run_for(3 * HIGH)
        return cluster.violations()
    finally:
        cluster.close()
        group.close()


def test_a_sentinel_failover_onto_a_replica_that_missed_a_leadership_change(
    tmp_path: Path,
) -> None:
    found = {}
    for trial in range(TRIALS):
        directory = tmp_path / f"trial-{trial}"
        directory.mkdir()
        violations = lossy_failover(directory)
        if violations:
            found[trial] = violations
    print(f"\nlossy SENTINEL FAILOVER: {TRIALS} trials, {len(found)} with violations")
    assert not found, found
