"""``celery worker -B`` on a PostgreSQL election with ``fast_failover``: after a kill -9 the
successor's beat sends at once, before its lease is valid for ``@leader_only`` work.

Three worker nodes and the recorder worker of :mod:`tests.beat_cluster` (broker: the session
Redis; the election, schedule state and once-only marks: the session PostgreSQL). The task body
records each execution; :mod:`harness.occurrence_checker` requires every occurrence executed
exactly once across the kills. The early sends are read from what the nodes wrote: the run
records' send times against the time the successor's log says its lease became valid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import celery_log
from harness.helpers import wait_until
from tests.beat_cluster import BeatCluster, assert_clean, figure, show

pytestmark = pytest.mark.celery_workers

#: What the engine logs for a claim brought forward by the holder's session ending.
EARLY_CLAIM = "as its holder's session ended"


@pytest.fixture
def cluster(redis_url: str, postgres_url: str, tmp_path: Path) -> Iterator[BeatCluster]:
    conf = {
        "leaderfeed_backend": postgres_url,
        "leaderfeed_backend_options": {"fast_failover": True},
        # A lease that becomes valid 1.2 s after the last renewal seen: longer than the 0.5 s
        # period, so at least one run falls due while the successor may only do fenced work.
        "leaderfeed_election_timeout_min": 1.2,
        "leaderfeed_election_timeout_max": 1.5,
    }
    cluster = BeatCluster(redis_url, tmp_path, conf=conf)
    try:
        yield cluster
    finally:
        cluster.close()


def became_leader_at(log: str, term: int) -> float | None:
    """The wall time of the log line saying the lease of ``term`` became valid, if written."""
    return next(
        (
            line.wall
            for line in celery_log.lines(log)
            if line.level == "INFO"
            and line.message.startswith("leaderfeed ")
            and line.message.endswith(f"became leader (term {term})")
        ),
        None,
    )


def test_kill_9_sends_fenced_runs_before_the_successor_may_run_leader_only_work(
    cluster: BeatCluster,
) -> None:
    nodes = ["a", "b", "c"]
    cluster.start_workers(nodes)
    for round_ in range(2):
        leader = cluster.wait_leader_sending(nodes)
        leader_host = cluster.hostname(leader)
        _, old_term = cluster.holder()
        killed_at = time.time()
        cluster.processes[leader].kill()

        def new_holder(leader_host: str = leader_host) -> tuple[str, int] | None:
            holder, term = cluster.holder()
            return None if holder in (None, leader_host) or term is None else (holder, term)

        successor, term = wait_until(new_holder, 10, interval=0.005, message="a new holder")
        assert term != old_term
        cluster.wait_more_runs(2, sender=successor, term=term)
        process = cluster.processes[successor.split(".", 1)[0]]
        valid_at = wait_until(
            lambda term=term, process=process: became_leader_at(process.log(), term),
            5,
            message=f"'became leader (term {term})' in the log",
        )
        assert EARLY_CLAIM in process.log(), process.log()[-3000:]
        first_send = min(
            run["sent_at"]
            for run in cluster.runs()
            if run["sender"] == successor and run["term"] == term
        )
        figure(f"kill -9 #{round_ + 1}: first fenced send after the kill", first_send - killed_at)
        figure(f"kill -9 #{round_ + 1}: lease valid after the kill", valid_at - killed_at)
        assert first_send < valid_at, "the successor's beat waited for the full lease"
        cluster.start_workers([leader])  # back to three nodes
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("kill -9 with fast_failover", report)
