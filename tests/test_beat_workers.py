"""Real ``celery worker -B`` and ``celery beat`` processes sending a 0.5 s periodic task.

Each test runs its own election and queues on the session Redis, with short timings
(heartbeat 0.2 s, election timeout 0.6-0.9 s). Three ``worker -B`` nodes elect a leader whose
embedded beat sends the task; a fourth, never-faulted recorder worker (in an election of its
own, without beat) runs it, so a run cannot be lost with a killed worker's prefetched messages.
The task body records its occurrence id, coalesced list, term and sender in a Redis list, and
:mod:`harness.occurrence_checker` judges the sends: no duplicates, and under the default
``run_once`` policy every nominal occurrence covered exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from celery_leaderfeed.backends import backend_from_url
from harness.helpers import wait_until
from harness.occurrence_checker import Report, Send, check
from tests.workers import CeleryProcess, wait_gone

pytestmark = pytest.mark.celery_workers

APP = "tests.celery_apps.beat_app"
PERIOD = 0.5
TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}


def figure(name: str, value: object) -> None:
    """A measured figure, printed for ``pytest -s`` runs."""
    shown = f"{value:.3f} s" if isinstance(value, float) else value
    print(f"\n[leaderfeed beat] {name}: {shown}")


class BeatCluster:
    """Beat-sending workers of one election, a recorder worker, and what the task recorded."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.name = f"bt-{uuid.uuid4().hex[:10]}"
        self.runs_key = f"leaderfeed-test:{self.name}:runs"
        self.pulse_queue = f"{self.name}.pulses"
        self.redis = redis.Redis.from_url(redis_url)
        self.store = backend_from_url(redis_url, name=self.name, timeout=2.0)
        self.beat_store = backend_from_url(redis_url, name=f"{self.name}.beat", timeout=2.0)
        self.store.connect()
        self.beat_store.connect()
        self.processes: dict[str, CeleryProcess] = {}
        #: Every process we started, children included (psutil refuses a reused PID).
        self.family: list[psutil.Process] = []

    def env(self, **conf: Any) -> dict[str, str]:
        settings = {
            "broker_url": self.redis_url,
            "leaderfeed_name": self.name,
            "task_default_queue": f"{self.name}.idle",
            "beat_schedule": {
                "pulse": {
                    "task": "beat_app.pulse",
                    "schedule": PERIOD,
                    "options": {"queue": self.pulse_queue},
                }
            },
            **TIMING,
            **conf,
        }
        return {
            "LEADERFEED_TEST_CONF": json.dumps(settings),
            "LEADERFEED_TEST_KEY": self.runs_key,
            "LEADERFEED_TEST_PERIOD": str(PERIOD),
        }

    def hostname(self, node: str) -> str:
        return f"{node}.{self.name}@localhost"

    def _spawn(self, node: str, command: list[str], ready: str, **conf: Any) -> CeleryProcess:
        process = CeleryProcess(
            APP, command, self.tmp_path / f"{node}.log", env=self.env(**conf), ready_marker=ready
        )
        self.processes[node] = process
        self.family.append(psutil.Process(process.pid))
        return process

    def start_workers(self, nodes: Sequence[str], *, beat: bool = True) -> None:
        started = [self.recorder()] if "recorder" not in self.processes else []
        for node in nodes:
            command = [
                "worker", "-l", "INFO", "-n", self.hostname(node), "-P", "threads", "-c", "2",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            started.append(self._spawn(node, [*command, "-B"] if beat else command, "ready."))
        for process in started:
            process.wait_ready(30)
            self.family.extend(process.children())

    def recorder(self) -> CeleryProcess:
        command = [
            "worker", "-l", "INFO", "-n", self.hostname("recorder"), "-Q", self.pulse_queue,
            "-P", "threads", "-c", "4", "--leaderfeed-name", f"{self.name}-recorder",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        return self._spawn("recorder", command, "ready.")

    def start_beats(self, nodes: Sequence[str]) -> None:
        for node in nodes:
            command = ["beat", "-S", "leaderfeed", "-l", "INFO"]
            self._spawn(node, command, "leaderfeed scheduler in election")
        for node in nodes:
            self.processes[node].wait_ready(30)

    def close(self) -> None:
        for process in self.processes.values():
            self.family.extend(process.children())
            process.stop()
        for member in self.family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(self.family, timeout=10)
        for key in self.redis.scan_iter(match=f"*{self.name}*"):
            self.redis.delete(key)
        self.store.close()
        self.beat_store.close()
        self.redis.close()

    # -- what happened ---------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(self.runs_key, 0, -1)]

    def sends(self) -> list[Send]:
        return [
            Send(run["occurrence"], tuple(run["coalesced"]), run["term"], run["sender"], run["at"])
            for run in self.runs()
        ]

    def beat_pid(self, node: str) -> int:
        """PID of the embedded beat child of worker ``node`` (it records its start)."""
        parent = self.processes[node].pid

        def found() -> int | None:
            for raw in self.redis.lrange(f"{self.runs_key}:beats", 0, -1):
                beat = json.loads(raw)
                if beat["ppid"] == parent:
                    return int(beat["pid"])
            return None

        return wait_until(found, 10, interval=0.02, message=f"beat child of {node}")

    def holder(self, store: Any = None) -> tuple[str | None, int | None]:
        record = (store or self.store).read().record
        return (None, None) if record is None else (record.holder, record.term)

    def wait_more_runs(self, count: int, timeout: float = 15.0, **match: Any) -> None:
        """Wait until ``count`` more runs (matching ``match``) were recorded than now."""

        def matching() -> int:
            return sum(all(run.get(k) == v for k, v in match.items()) for run in self.runs())

        target = matching() + count
        wait_until(lambda: matching() >= target, timeout, interval=0.02, message=f"{match}")

    def wait_leader_sending(self, candidates: Sequence[str]) -> str:
        """The node whose beat sends, once it has sent a few runs."""
        hosts = {self.hostname(node): node for node in candidates}

        def sender() -> str | None:
            runs = [run for run in self.runs() if run["sender"] in hosts]
            return hosts[runs[-1]["sender"]] if len(runs) >= 3 else None

        return wait_until(sender, 20, interval=0.02, message="a leader sending")

    def settled_report(self) -> Report:
        """Stop every sender, let the recorder drain the queue, then judge the sends."""
        for node, process in self.processes.items():
            if node != "recorder" and process.process.poll() is None:
                process.send(signal.SIGTERM)
        for node, process in self.processes.items():
            if node != "recorder":
                process.process.wait(30)
        previous = [-1]

        def settled() -> bool:
            """Queue empty and no new run since the last poll: nothing is in flight."""
            count = len(self.runs())
            quiet = count == previous[0] and self.redis.llen(self.pulse_queue) == 0
            previous[0] = count
            return quiet

        wait_until(settled, 10, interval=0.3, message="the recorder drained the queue")
        return check(self.sends(), timedelta(seconds=PERIOD))


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[BeatCluster]:
    cluster = BeatCluster(redis_url, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


def assert_clean(report: Report, cluster: BeatCluster) -> None:
    logs = {node: process.log()[-3000:] for node, process in cluster.processes.items()}
    assert report.ok, f"{report.summary()}\n{report.table()}\n{logs}"


def show(fault: str, report: Report) -> None:
    """Print how the occurrences were covered across ``fault``."""
    coalesced = sum(
        1
        for occurrence, sends in report.coverage.items()
        for send in sends
        if send.occurrence != occurrence
    )
    per_occurrence = sorted({len(sends) for sends in report.coverage.values()})
    figure(
        f"{fault}: sends per occurrence",
        f"{'/'.join(map(str, per_occurrence))} ({report.summary()}; {coalesced} coalesced)",
    )


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
