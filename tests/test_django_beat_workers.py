"""``celery beat -S leaderfeed-django`` and ``worker -B`` with it, as real processes, on
django-celery-beat's real migrations - on SQLite and on a PostgreSQL server the tests start.

Periodic tasks are created and edited while the cluster runs, by a separate process that saves
the models as the admin does (:mod:`tests.django_project.edit`). The leader is killed (-9),
stopped (SIGTERM) or paused past its lease (SIGSTOP); :mod:`harness.occurrence_checker` judges
the sends recorded by the task bodies: no duplicates, none missed (misfire policy ``run_once``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.helpers import wait_until
from harness.occurrence_checker import due_of
from harness.servers.postgres_process import PostgresServer
from tests.beat_cluster import BeatCluster, assert_clean, show
from tests.workers import REPO

pytestmark = pytest.mark.celery_workers

APP = "tests.django_project.celery_app"


def edit(db_url: str, *args: str) -> Any:
    """Run one edit of the schedule in its own process; its JSON answer, if any."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.django_project.edit", *args],
        env={**os.environ, "LEADERFEED_TEST_DJANGO_DB": db_url},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'schedule.sqlite3'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database("dj"))
    edit(url, "migrate")
    return url


def django_cluster(redis_url: str, tmp_path: Path, db_url: str) -> BeatCluster:
    """Beats and workers of the Django project on ``db_url``, no static schedule."""
    cluster = BeatCluster(
        redis_url,
        tmp_path,
        app=APP,
        scheduler="leaderfeed-django",
        env={"LEADERFEED_TEST_DJANGO_DB": db_url},
        conf={"beat_scheduler": "leaderfeed-django", "beat_schedule": {}},
    )
    cluster.db_url = db_url  # type: ignore[attr-defined]
    return cluster


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path, db_url: str) -> Iterator[BeatCluster]:
    cluster = django_cluster(redis_url, tmp_path, db_url)
    try:
        yield cluster
    finally:
        cluster.close()


def start(cluster: BeatCluster, mode: str) -> list[str]:
    nodes = ["a", "b", "c"]
    if mode == "beat":
        cluster.start_workers([], beat=False)  # the recorder
        cluster.start_beats(nodes)
    else:
        cluster.start_workers(nodes)
    return nodes


def sending_node(cluster: BeatCluster, mode: str, *, besides: str | None = None) -> str:
    """The node whose beat has sent three runs in a row (and is not ``besides``)."""

    def node_of(sender: str) -> str | None:
        for node, process in cluster.processes.items():
            if node == "recorder":
                continue
            if sender in (cluster.hostname(node), f"beat@{os.uname().nodename}:{process.pid}"):
                return node
        return None

    def found() -> str | None:
        runs = cluster.runs()
        if len(runs) < 3:
            return None
        last = [node_of(run["sender"]) for run in runs[-3:]]
        node = last[-1]
        return node if node is not None and node != besides and len(set(last)) == 1 else None

    return wait_until(found, 30, interval=0.05, message="a node sending")


def sqlite_writable(db_url: str) -> bool:
    """Whether a write could start now: no process holds SQLite's database lock."""
    connection = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.2)
    try:
        connection.execute("BEGIN EXCLUSIVE")  # no other lock at all, not even a reader's
        connection.rollback()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


def pause(cluster: BeatCluster, node: str) -> None:
    """SIGSTOP ``node``'s process group - on SQLite, at a moment it holds no database lock.

    SQLite locks the whole file while a process writes, so a process paused inside one of its
    (millisecond) writes blocks every other client until it resumes: a property of SQLite, not
    of the election (the guide says so). Caught in the act, it is resumed and paused again.
    """
    group = cluster.processes[node].pid
    db_url: str = cluster.db_url  # type: ignore[attr-defined]
    for _ in range(20):
        os.killpg(group, signal.SIGSTOP)
        if not db_url.startswith("sqlite") or sqlite_writable(db_url):
            return
        os.killpg(group, signal.SIGCONT)
        wait_until(lambda: sqlite_writable(db_url), 10, interval=0.01, message="SQLite unlocked")
    raise AssertionError(f"{node} held SQLite's lock at every one of 20 pauses")


def fault(cluster: BeatCluster, node: str, kind: str) -> None:
    process = cluster.processes[node]
    if kind == "kill -9":
        os.killpg(process.pid, signal.SIGKILL)
    elif kind == "SIGTERM":
        process.send(signal.SIGTERM)
    else:
        pause(cluster, node)


SCENARIOS = [
    pytest.param("beat", "kill -9", id="beat-kill9"),
    pytest.param("beat", "SIGSTOP", id="beat-sigstop"),
    pytest.param("worker -B", "SIGTERM", id="workerB-sigterm"),
    pytest.param("worker -B", "kill -9", id="workerB-kill9"),
]


@pytest.mark.parametrize(("mode", "kind"), SCENARIOS)
def test_a_row_added_at_runtime_is_sent_once_per_occurrence_across_a_failover(
    cluster: BeatCluster, mode: str, kind: str
) -> None:
    db_url: str = cluster.db_url  # type: ignore[attr-defined]
    nodes = start(cluster, mode)
    edit(db_url, "add", "pulse", "--every", "0.5", "--queue", cluster.pulse_queue)
    leader = sending_node(cluster, mode)
    fault(cluster, leader, kind)
    try:
        successor = sending_node(cluster, mode, besides=leader)
    finally:
        if kind == "SIGSTOP":
            os.killpg(cluster.processes[leader].pid, signal.SIGCONT)
    assert successor in nodes
    cluster.wait_more_runs(4)
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show(f"django-celery-beat, {mode}, {kind} of the leader", report)
    row = edit(db_url, "show", "pulse")
    last_due = max(due_of(send.occurrence) for send in cluster.sends())
    assert datetime.fromisoformat(row["last_run_at"]) == last_due  # nominal, not send time
    if kind != "kill -9":  # a killed leader may die between a send and recording it
        assert row["total_run_count"] == len(cluster.sends())


def test_edits_made_while_the_leader_is_paused_take_effect_under_its_successor(
    cluster: BeatCluster,
) -> None:
    """Disable one row, change another's interval and add a clocked one-off while the leader is
    stopped past its lease: the successor applies all three, and the old leader, resumed,
    sends nothing in its old term."""
    db_url: str = cluster.db_url  # type: ignore[attr-defined]
    start(cluster, "beat")
    edit(db_url, "add", "pulse", "--every", "0.5", "--queue", cluster.pulse_queue)
    leader = sending_node(cluster, "beat")
    pause(cluster, leader)
    try:
        edit(db_url, "disable", "pulse")
        disabled_at = time.time()
        edit(db_url, "add", "slow", "--every", "1.0", "--queue", cluster.pulse_queue)
        edit(db_url, "every", "slow", "0.7")
        changed_at = time.time()
        clocked = edit(db_url, "clocked", "once", "--in", "1.5", "--queue", cluster.pulse_queue)

        def sent(name: str) -> list[dict[str, Any]]:
            return [r for r in cluster.runs() if r["occurrence"].rpartition("@")[0] == name]

        wait_until(lambda: len(sent("slow")) >= 4 and sent("once"), 30, interval=0.05)
    finally:
        os.killpg(cluster.processes[leader].pid, signal.SIGCONT)
    cluster.wait_more_runs(2)
    cluster.settle()
    occurrences = [run["occurrence"] for run in cluster.runs()]
    assert len(occurrences) == len(set(occurrences)), "an occurrence was sent twice"
    late = [r for r in sent("pulse") if r["sent_at"] > disabled_at + 1.0]
    assert late == [], "a disabled row was still sent"
    slow = sorted(due_of(r["occurrence"]) for r in sent("slow"))
    assert len(slow) >= 4
    gaps = {b - a for a, b in itertools.pairwise(slow)}
    assert gaps == {timedelta(seconds=0.7)}, (changed_at, slow)
    once = sent("once")
    assert len(once) == 1
    assert due_of(once[0]["occurrence"]) == datetime.fromisoformat(clocked["clocked_time"])
    assert edit(db_url, "show", "once")["enabled"] is False


def test_the_database_down_at_start_and_during_a_term_stops_sends_until_it_returns(
    redis_url: str, tmp_path: Path
) -> None:
    """A private PostgreSQL, stopped before the beat starts and again while it leads: the beat
    keeps running, says why in one line, sends nothing meanwhile, and resumes when it is back;
    the runs missed meanwhile are sent once (run_once), none twice."""
    server = PostgresServer().start()
    db_url = server.url(server.create_database("dj"))
    edit(db_url, "migrate")
    cluster = django_cluster(redis_url, tmp_path, db_url)
    try:
        cluster.start_workers([], beat=False)
        edit(db_url, "add", "pulse", "--every", "0.5", "--queue", cluster.pulse_queue)
        server.stop()
        cluster.start_beats(["a"])
        beat = cluster.processes["a"]
        line = "beat: reading the schedule failed: django-celery-beat's database"
        wait_until(lambda: line in beat.log(), 20, interval=0.05, message="the outage reported")
        assert cluster.runs() == []
        server.start()
        cluster.wait_more_runs(3, timeout=20)
        server.stop()
        stopped_at = time.time()
        wait_until(lambda: beat.log().count(line) >= 2, 20, interval=0.05)
        sent_before = len(cluster.runs())
        # Quiet for a few periods: what was in flight at the stop has run by now.
        wait_until(lambda: time.time() > stopped_at + 2.0, 5, interval=0.1)
        late = [r for r in cluster.runs() if r["sent_at"] > stopped_at + 1.0]
        assert late == [], "sent while the database was down"
        server.start()
        cluster.wait_more_runs(3, timeout=20)
        assert beat.process.poll() is None
        assert len(cluster.runs()) > sent_before
        report = cluster.settled_report()
        assert_clean(report, cluster)
        show("django-celery-beat, database down and back", report)
        log = beat.log()
        assert "Traceback" not in log
        assert "reading the schedule works again" in log
    finally:
        cluster.close()
        server.close()
