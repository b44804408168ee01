"""Real ``celery worker -B`` and ``celery beat`` processes sending a 0.5 s periodic task.

Each test runs its own election and queues, with short timings (heartbeat 0.2 s, election
timeout 0.6-0.9 s), once with the election's store (record, schedule state, once-only marks) on
the session Redis and once on the session PostgreSQL; the broker is always the session Redis.
Three ``worker -B`` nodes elect a leader whose embedded beat sends the task; a fourth,
never-faulted recorder worker (in an election of its own, without beat) runs it, so a run cannot
be lost with a killed worker's prefetched messages. The task body records each *execution* - its
occurrence id, coalesced list, term and sender - in a Redis list, and
:mod:`harness.occurrence_checker` judges the executions: under the default ``run_once`` policy
every nominal occurrence covered by exactly one execution (0 lost, 0 run twice).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.helpers import wait_until
from tests.beat_cluster import BeatCluster, assert_clean, figure, show
from tests.workers import wait_gone

pytestmark = pytest.mark.celery_workers


@pytest.fixture
def cluster(
    redis_url: str, tmp_path: Path, election_store: dict[str, str]
) -> Iterator[BeatCluster]:
    """On the election store of ``tests/fixtures/election_store.py``: Redis, PostgreSQL."""
    cluster = BeatCluster(redis_url, tmp_path, conf=election_store)
    try:
        yield cluster
    finally:
        cluster.close()


# -- worker -B ------------------------------------------------------------------------------------


def test_kill_9_of_the_leader_fails_over_and_its_orphaned_beat_sends_nothing(
    cluster: BeatCluster,
) -> None:
    nodes = ["a", "b", "c"]
    cluster.start_workers(nodes)
    leader = cluster.wait_leader_sending(nodes)
    leader_host = cluster.hostname(leader)
    orphan = cluster.beat_pid(leader)
    killed_at = time.time()
    cluster.processes[leader].kill()
    new_holder = wait_until(
        lambda: (holder := cluster.holder()[0]) not in (None, leader_host) and holder,
        10,
        interval=0.01,
        message="a new holder",
    )
    figure("crash failover (record taken over)", time.time() - killed_at)
    cluster.wait_more_runs(4, sender=new_holder)
    first_new = min(run["sent_at"] for run in cluster.runs() if run["sender"] == new_holder)
    figure("crash failover (first send by new leader)", first_new - killed_at)
    wait_gone(orphan, 10)  # the orphaned beat child noticed and exited
    late = [r for r in cluster.runs() if r["sender"] == leader_host and r["sent_at"] > killed_at]
    assert late == [], "the orphaned beat child sent after its worker died"
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("kill -9 of the leader", report)


def test_sigterm_of_the_leader_hands_over_without_repeat_or_loss(cluster: BeatCluster) -> None:
    nodes = ["a", "b", "c"]
    cluster.start_workers(nodes)
    leader = cluster.wait_leader_sending(nodes)
    leader_host = cluster.hostname(leader)
    stopped_at = time.time()
    cluster.processes[leader].send(signal.SIGTERM)
    new_holder = wait_until(
        lambda: (holder := cluster.holder()[0]) not in (None, leader_host) and holder,
        10,
        interval=0.01,
        message="a new holder",
    )
    figure("graceful handover (record taken over)", time.time() - stopped_at)
    cluster.wait_more_runs(4, sender=new_holder)
    assert cluster.processes[leader].process.wait(30) == 0
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("SIGTERM of the leader", report)
    senders = {send.sender for sends in report.coverage.values() for send in sends}
    assert {leader_host, new_holder} <= senders


def test_a_paused_leader_cannot_send_when_it_wakes(cluster: BeatCluster) -> None:
    """SIGSTOP the leader's whole process group (worker, beat child) past its lease."""
    nodes = ["a", "b", "c"]
    cluster.start_workers(nodes)
    leader = cluster.wait_leader_sending(nodes)
    leader_host = cluster.hostname(leader)
    _, old_term = cluster.holder()
    group = cluster.processes[leader].pid
    paused_at = time.time()
    os.killpg(group, signal.SIGSTOP)
    try:
        new_holder = wait_until(
            lambda: (holder := cluster.holder()[0]) not in (None, leader_host) and holder,
            10,
            interval=0.01,
            message="a new holder",
        )
        cluster.wait_more_runs(3, sender=new_holder)
    finally:
        os.killpg(group, signal.SIGCONT)
    cluster.wait_more_runs(4, sender=new_holder)
    stale = [
        run
        for run in cluster.runs()
        if run["sender"] == leader_host and run["term"] == old_term and run["sent_at"] > paused_at
    ]
    assert stale == [], "the paused leader sent in its old term after waking"
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("SIGSTOP/SIGCONT of the leader", report)


def test_runs_missed_while_no_node_lived_are_sent_once_listing_them(cluster: BeatCluster) -> None:
    """The whole cluster dies; a new node resumes from the stored state (misfire ``run_once``)."""
    cluster.start_workers(["a", "b"])
    leader = cluster.wait_leader_sending(["a", "b"])
    orphans = [cluster.beat_pid(node) for node in ("a", "b")]
    for node in ("a", "b"):
        cluster.processes[node].kill()
    for pid in orphans:
        wait_gone(pid, 10)
    cluster.start_workers(["c"])  # starting takes a few periods: those runs were missed
    newcomer = cluster.hostname("c")
    cluster.wait_more_runs(3, sender=newcomer)
    first = next(run for run in cluster.runs() if run["sender"] == newcomer)
    assert first["coalesced"], "the first send after the outage should list the missed runs"
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("restart after a full outage", report)
    assert {cluster.hostname(leader), newcomer} <= {
        send.sender for sends in report.coverage.values() for send in sends
    }


# -- standalone beat -------------------------------------------------------------------------------


def test_standalone_beats_fail_over_after_kill_9(cluster: BeatCluster) -> None:
    cluster.start_workers(["w"], beat=False)
    cluster.start_beats(["beat1", "beat2"])

    def leading_beat() -> str | None:
        holder = cluster.holder(cluster.beat_store)[0]
        runs = [run for run in cluster.runs() if run["sender"] == holder]
        return holder if holder and len(runs) >= 3 else None

    leader = wait_until(leading_beat, 20, interval=0.02, message="a beat leading and sending")
    pid = int(leader.rsplit(":", 1)[1])
    node = next(n for n, p in cluster.processes.items() if p.pid == pid)
    killed_at = time.time()
    cluster.processes[node].kill()
    new_leader = wait_until(
        lambda: (h := cluster.holder(cluster.beat_store)[0]) not in (None, leader) and h,
        10,
        interval=0.01,
    )
    figure("standalone beat crash failover (record)", time.time() - killed_at)
    cluster.wait_more_runs(4, sender=new_leader)
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("kill -9 of a standalone beat", report)
    assert {send.sender for sends in report.coverage.values() for send in sends} == {
        leader,
        new_leader,
    }
