"""Every periodic run executed exactly once while beat leaders crash between claim and confirm.

Real ``celery worker -B`` nodes on the session Redis broker, the election's store (schedule
state, once-only marks) on that Redis or on the session PostgreSQL, as in
``tests/test_beat_workers.py``, with the tests' ``CrashingScheduler``: a node's beat, at the
third time it reaches the chosen fault point - between claim and publish (``claimed``) or
between publish and confirm (``published``) - SIGKILLs its worker and exits. Each crash is
replaced by a fresh node, until ``LEADERFEED_TEST_CRASHES`` crashes (3 by default; 20 for the
figures in the notes) have happened; a last node without the fault then runs on for a few
periods. The never-faulted recorder worker runs the periodic task, whose body records each
*execution*; :mod:`harness.occurrence_checker` then requires every nominal occurrence covered
by exactly one execution: 0 lost, 0 run twice.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.helpers import wait_until
from tests.beat_cluster import BeatCluster, assert_clean, figure, show

pytestmark = pytest.mark.celery_workers

CRASHES = int(os.environ.get("LEADERFEED_TEST_CRASHES", "3"))
SCHEDULER = "tests.celery_apps.crashing_scheduler:CrashingScheduler"


@pytest.fixture(params=["claimed", "published"])
def crash_at(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(
    redis_url: str, tmp_path: Path, crash_at: str, election_store: dict[str, str]
) -> Iterator[BeatCluster]:
    """On the election store of ``tests/fixtures/election_store.py``: Redis, PostgreSQL."""
    conf = {"beat_scheduler": SCHEDULER, **election_store}
    cluster = BeatCluster(redis_url, tmp_path, conf=conf)
    try:
        yield cluster
    finally:
        cluster.close()


def test_crashed_leaders_lose_no_run_and_run_none_twice(
    cluster: BeatCluster, crash_at: str
) -> None:
    started = time.monotonic()
    crashing = {"LEADERFEED_TEST_CRASH_AT": crash_at}
    cluster.extra_env.update(crashing)
    cluster.start_workers(["n0", "n1", "n2"])
    next_node = 3
    crashed: list[str] = []

    def newly_dead() -> list[str]:
        return [
            node
            for node, process in cluster.processes.items()
            if node != "recorder" and node not in crashed and process.process.poll() is not None
        ]

    while len(crashed) < CRASHES:
        dead = wait_until(
            newly_dead, 30, interval=0.02, message=f"crash {len(crashed) + 1} of {CRASHES}"
        )
        crashed += dead
        if len(crashed) >= CRASHES:
            for key in crashing:
                cluster.extra_env.pop(key)
        cluster.start_workers([f"n{next_node}"])  # keep the cluster at three live nodes
        next_node += 1
    for node in crashed:
        assert f"crash injected {crash_at}" in cluster.processes[node].log(), node
    cluster.wait_more_runs(3, timeout=30)
    report = cluster.settled_report()
    # The nodes alive at the last counted crash kept the fault: count every crash injected.
    crashes = sum(
        process.log().count(f"crash injected {crash_at}") for process in cluster.processes.values()
    )
    assert_clean(report, cluster)
    show(f"{crashes} crashes at '{crash_at}'", report)

    runs = cluster.runs()
    republished = [run for run in runs if run.get("republished") is not None]
    duplicates_dropped = len(
        re.findall(r"not run: a duplicate publish", cluster.processes["recorder"].log())
    )
    executions = len(runs)
    figure(
        f"crash at '{crash_at}': executions / republished executions / duplicates dropped",
        f"{executions} / {len(republished)} / {duplicates_dropped} over {crashes} crashes",
    )
    figure(f"crash at '{crash_at}': test time", time.monotonic() - started)
    # Each crash left its run pending, and a successor published it again: after a crash
    # before the publish that republish is the one execution; after it, the one dropped.
    if crash_at == "claimed":
        assert len(republished) >= 1, "no republished run executed"
    else:
        assert duplicates_dropped >= 1, "no duplicate publish reached the consumer"
