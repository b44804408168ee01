"""Real ``celery worker`` processes electing a leader over the session Redis.

Each test runs its own election (a unique ``leaderfeed_name``) and its own queues; workers are
subprocesses of ``tests.celery_apps.leader_tasks`` with short timings (heartbeat 0.2 s, election
timeout 0.6-0.9 s). Leader-only bodies record start, ticks and end with ``time.monotonic()``
(one clock for every process here) so overlaps between workers can be checked exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.celery.decorators import SKIPPED
from celery_leaderfeed.errors import NotLeaderError
from harness.helpers import wait_until
from harness.servers.redis_process import RedisServer
from tests.workers import REPO, CeleryProcess

pytestmark = pytest.mark.celery_workers

APP = "tests.celery_apps.leader_tasks"
HEARTBEAT = 0.2
TIMING = {
    "leaderfeed_heartbeat_interval": HEARTBEAT,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}


class Cluster:
    """Workers of one election, a client to send them tasks, and what their tasks recorded."""

    def __init__(self, redis_url: str, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.name = f"lt-{uuid.uuid4().hex[:10]}"
        self.runs_key = f"leaderfeed-test:{self.name}:runs"
        self.redis = redis.Redis.from_url(redis_url)
        self.store = backend_from_url(redis_url, name=self.name, timeout=2.0)
        self.store.connect()
        self.client = Celery("leaderfeed-test-client", broker=redis_url, backend=redis_url)
        self.workers: dict[str, CeleryProcess] = {}

    # -- workers -----------------------------------------------------------------------------

    def hostname(self, node: str) -> str:
        return f"{node}.{self.name}@localhost"

    def queue(self, node: str) -> str:
        return f"{self.name}.{node}"

    def env(self, **conf: Any) -> dict[str, str]:
        settings = {
            "broker_url": self.redis_url,
            "result_backend": self.redis_url,
            "leaderfeed_name": self.name,
            # These tests send leader-only tasks to each worker's own queue to watch followers
            # refuse them: the `skip` policy, chosen explicitly (the default sends them on to
            # the leader queue, which test_leader_queue_workers.py covers).
            "leaderfeed_follower_policy": "skip",
            **TIMING,
            **conf,
        }
        settings = {key: value for key, value in settings.items() if value is not None}
        return {"LEADERFEED_TEST_CONF": json.dumps(settings), "LEADERFEED_TEST_KEY": self.runs_key}

    def start(
        self,
        nodes: Sequence[str],
        *args: str,
        pool: str = "prefork",
        concurrency: int = 2,
        wait: bool = True,
        **conf: Any,
    ) -> list[CeleryProcess]:
        """Start workers ``nodes`` together, each consuming its own queue."""
        started = []
        for node in nodes:
            command = [
                "worker", "-l", "INFO", "-n", self.hostname(node), "-Q", self.queue(node),
                "-P", pool, "-c", str(concurrency),
                "--without-gossip", "--without-mingle", "--without-heartbeat", *args,
            ]  # fmt: skip
            process = CeleryProcess(
                APP, command, self.tmp_path / f"{node}.log", env=self.env(**conf)
            )
            self.workers[node] = process
            started.append(process)
        if wait:
            for process in started:
                process.wait_ready(30)
        return started

    def node(self, hostname: str) -> str:
        return hostname.partition(".")[0]

    # -- tasks -------------------------------------------------------------------------------

    def send(self, task: str, node: str, *args: Any) -> AsyncResult:
        return self.client.send_task(f"{APP}.{task}", args=args, queue=self.queue(node))

    def probe(self, node: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.send("probe", node).get(timeout=timeout)  # type: ignore[no-any-return]

    def runs(self, **match: Any) -> list[dict[str, Any]]:
        runs = [json.loads(raw) for raw in self.redis.lrange(self.runs_key, 0, -1)]
        return [run for run in runs if all(run.get(k) == v for k, v in match.items())]

    def broadcast(self, command: str, nodes: Sequence[str]) -> dict[str, Any]:
        replies = self.client.control.broadcast(
            command,
            reply=True,
            timeout=3.0,
            limit=len(nodes),
            destination=[self.hostname(node) for node in nodes],
        )
        return {host: reply for item in replies for host, reply in item.items()}

    # -- the election --------------------------------------------------------------------------

    def holder(self) -> tuple[str | None, int | None]:
        record = self.store.read().record
        if record is None:
            return None, None
        return record.holder, record.term

    def wait_leader(self, nodes: Sequence[str], timeout: float = 15.0) -> tuple[str, int]:
        """Wait until one of ``nodes`` holds the record *and* its processes act on it."""
        hosts = {self.hostname(node) for node in nodes}

        def held() -> tuple[str, int] | None:
            holder, term = self.holder()
            return (holder, term) if holder in hosts and term is not None else None

        holder, term = wait_until(held, timeout, interval=0.02, message="a leader")
        node = self.node(holder)
        self.wait_role(node, "leader", timeout)
        return node, term

    def wait_role(self, node: str, role: str, timeout: float = 15.0) -> None:
        """Wait until ``node``'s main process reports ``role`` (its children read the same)."""

        def reached() -> bool:
            report = self.broadcast("leaderfeed", [node]).get(self.hostname(node), {})
            return report.get("role") == role

        wait_until(reached, timeout, interval=0.02, message=f"{node} is {role}")

    def close(self) -> None:
        for process in self.workers.values():  # kill everything first: the waits overlap
            for child in process.children():
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.send(signal.SIGKILL)
        for node, process in self.workers.items():
            process.stop()
            print(f"--- {node} log (tail) ---\n{process.log()[-3000:]}")  # shown on failure
        self.store.close()
        for key in self.redis.scan_iter(match=f"*{self.name}*"):
            self.redis.delete(key)
        self.redis.close()
        self.client.close()


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(redis_url, tmp_path)
    try:
        yield group
    finally:
        group.close()


class Feeder(threading.Thread):
    """Keeps sending one task to a node's queue until stopped."""

    def __init__(self, send: Callable[[int], object], every: float = 0.03) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.every = every
        self.done = threading.Event()

    def run(self) -> None:
        count = 0
        while not self.done.wait(self.every):
            self.send(count)
            count += 1

    def __enter__(self) -> Feeder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join(5)


def final_state(result: AsyncResult, timeout: float = 15.0) -> str:
    done = {"SUCCESS", "FAILURE", SKIPPED}
    return wait_until(lambda: result.state in done and result.state, timeout, interval=0.02)  # type: ignore[no-any-return]


# -- who runs leader-only bodies -------------------------------------------------------------------


def test_only_the_leader_runs_leader_only_bodies(cluster: Cluster) -> None:
    nodes = ["w1", "w2", "w3"]
    cluster.start(nodes)
    leader, term = cluster.wait_leader(nodes)
    followers = [node for node in nodes if node != leader]

    sent = {
        node: [cluster.send("leader_work", node, f"{node}-{i}") for i in range(4)] for node in nodes
    }
    states = {node: [final_state(result) for result in results] for node, results in sent.items()}
    assert states[leader] == ["SUCCESS"] * 4
    for node in followers:
        assert states[node] == [SKIPPED] * 4
        assert sent[node][0].info == {
            "reason": "not_leader",
            "worker": cluster.hostname(node),
            "leader": cluster.hostname(leader),
        }

    starts = cluster.runs(event="start")
    assert {run["host"] for run in starts} == {cluster.hostname(leader)}
    assert {run["term"] for run in starts} == {term}
    pool_children = {child.pid for child in cluster.workers[leader].children()}
    assert {run["pid"] for run in starts} <= pool_children  # not the worker's main process

    # The other policies, on a follower and on the leader.
    with pytest.raises(NotLeaderError):
        cluster.send("leader_or_raise", followers[0]).get(timeout=10)
    with pytest.raises(NotLeaderError):  # retried once, then given up
        cluster.send("leader_or_retry", followers[0]).get(timeout=10)
    assert cluster.send("leader_or_raise", leader).get(timeout=10) == term

    # What `celery inspect leaderfeed` and `inspect stats` report.
    reports = cluster.broadcast("leaderfeed", nodes)
    assert set(reports) == {cluster.hostname(node) for node in nodes}
    roles = {host: report["role"] for host, report in reports.items()}
    assert roles == {cluster.hostname(n): "leader" if n == leader else "follower" for n in nodes}
    assert {report["leader"] for report in reports.values()} == {cluster.hostname(leader)}
    assert {report["term"] for report in reports.values()} == {term}
    assert all(0 <= report["lease_age"] < 1.0 for report in reports.values())
    stats = cluster.broadcast("stats", [leader])[cluster.hostname(leader)]
    assert stats["leaderfeed"]["role"] == "leader"
    assert stats["leaderfeed"]["term"] == term


# -- leadership changes ----------------------------------------------------------------------------

CHANGES = [
    # Every task in a child of its own: replacement children forked after the election.
    pytest.param("prefork", ["--max-tasks-per-child=1", "-c", "4"], {}, signal.SIGKILL,
                 id="prefork-max1-kill9"),
    pytest.param("prefork", [], {"worker_pool_start_method": "spawn"}, signal.SIGTERM,
                 id="spawn-sigterm"),
    pytest.param("threads", [], {}, signal.SIGKILL, id="threads-kill9"),
]  # fmt: skip


@pytest.mark.parametrize(("pool", "args", "conf", "how"), CHANGES)
def test_leader_only_follows_a_leadership_change_within_a_heartbeat(
    cluster: Cluster, pool: str, args: list[str], conf: dict[str, Any], how: signal.Signals
) -> None:
    nodes = ["w1", "w2"]
    cluster.start(nodes, *args, pool=pool, **conf)
    old, old_term = cluster.wait_leader(nodes)
    (new,) = [node for node in nodes if node != old]
    assert cluster.send("leader_work", old, "before").get(timeout=10)["term"] == old_term
    assert not cluster.probe(new)["leader"]
    fresh_children = "--max-tasks-per-child=1" in args

    probes: list[dict[str, Any]] = []
    seen: dict[str, float] = {}
    stop = threading.Event()

    def keep_probing() -> None:
        while not stop.is_set():
            probes.append(cluster.probe(new, timeout=20))

    def enough() -> bool:
        late = [p for p in probes if p["at"] >= seen["at"] + HEARTBEAT]
        born_after = [p for p in late if p["born"] > seen["wall"]]
        return len(late) >= 2 and (bool(born_after) or not fresh_children)

    def new_holder() -> bool:
        holder, _ = cluster.holder()
        if holder == cluster.hostname(new) and "at" not in seen:
            seen.update(at=time.monotonic(), wall=time.time())
        return holder == cluster.hostname(new)

    prober = threading.Thread(target=keep_probing, daemon=True)
    prober.start()
    try:
        cluster.workers[old].send(how)
        wait_until(new_holder, 10, interval=0.002, message="the follower took over")
        wait_until(enough, 20, interval=0.01, message="probes after the change")
    finally:
        stop.set()
        prober.join(25)

    new_term = cluster.holder()[1]
    assert new_term is not None and new_term > old_term
    # Every process of the new leader - including children forked after the election - saw
    # the new lease within one heartbeat of the record naming it.
    late = [p for p in probes if p["at"] >= seen["at"] + HEARTBEAT]
    assert all(p["leader"] and p["term"] == new_term for p in late), late
    first = min(p["at"] for p in probes if p["leader"])
    print(f"{pool} {how.name}: first probe seeing the new lease ran {first - seen['at']:+.3f} s "
          f"after the record named the new leader ({len(probes)} probes)")  # fmt: skip

    ran = cluster.send("leader_work", new, "after").get(timeout=20)
    assert (ran["host"], ran["term"]) == (cluster.hostname(new), new_term)
    holders = {(run["term"], run["host"]) for run in cluster.runs(event="start")}
    assert holders == {(old_term, cluster.hostname(old)), (new_term, cluster.hostname(new))}


# -- shutdown order --------------------------------------------------------------------------------

SHUTDOWNS = [
    pytest.param("prefork", signal.SIGTERM, True, id="prefork-warm"),
    pytest.param("prefork", signal.SIGQUIT, False, id="prefork-cold"),
    # Cold shutdown of a thread pool running a task fails inside Celery 5.7 (TaskPool has no
    # kill_job) and ends as a warm stop; the step's cold path for threads is a unit test.
    pytest.param("threads", signal.SIGTERM, True, id="threads-warm"),
]


@pytest.mark.parametrize(("pool", "how", "finishes"), SHUTDOWNS)
def test_next_leader_starts_leader_only_work_after_the_old_leaders_stopped(
    cluster: Cluster, pool: str, how: signal.Signals, finishes: bool
) -> None:
    nodes = ["w1", "w2"]
    cluster.start(nodes, pool=pool)
    old, old_term = cluster.wait_leader(nodes)
    (new,) = [node for node in nodes if node != old]
    old_host, new_host = cluster.hostname(old), cluster.hostname(new)

    cluster.send("leader_work", old, "long", 1.5)
    wait_until(lambda: cluster.runs(label="long", event="start"), 10, message="long task started")
    with Feeder(lambda i: cluster.send("leader_work", new, f"next-{i}")):
        cluster.workers[old].send(how)
        wait_until(lambda: cluster.runs(host=new_host, event="start"), 15, message="new leader ran")
    assert cluster.workers[old].process.wait(15) is not None

    runs = cluster.runs()
    last_old = max(run["at"] for run in runs if run["host"] == old_host)
    first_new = min(run["at"] for run in runs if run["host"] == new_host)
    assert first_new > last_old, "the new leader started while the old one's task still ran"
    assert bool(cluster.runs(label="long", event="end")) == finishes
    assert {run["term"] for run in runs if run["host"] == new_host} == {cluster.holder()[1]}
    assert cluster.holder()[1] > old_term  # type: ignore[operator]
    assert "resigning" in cluster.workers[old].log()  # handed over, not timed out
    print(f"{pool} {how.name}: new leader's first body {first_new - last_old:.3f} s after the "
          f"old leader's last sign of life")  # fmt: skip


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_warm_shutdown_hands_over_while_ordinary_tasks_still_run(
    cluster: Cluster, pool: str
) -> None:
    """Only leader-only bodies hold a handover up; a long ordinary task drains afterwards."""
    nodes = ["w1", "w2"]
    cluster.start(nodes, pool=pool)
    old, old_term = cluster.wait_leader(nodes)
    (new,) = [node for node in nodes if node != old]

    cluster.send("plain_work", old, "slow", 5.0)
    wait_until(lambda: cluster.runs(label="slow", event="start"), 10, message="slow task started")
    cluster.workers[old].send(signal.SIGTERM)
    _, new_term = cluster.wait_leader([new])
    led_at = time.monotonic()
    assert new_term > old_term
    assert cluster.workers[old].process.wait(15) is not None  # it still drains, then exits
    [end] = cluster.runs(label="slow", event="end")  # the ordinary task was not cut short
    assert led_at < end["at"], "the old leader held on until its ordinary task ended"
    assert "resigning" in cluster.workers[old].log()  # handed over, not timed out
    print(f"{pool}: new leader {end['at'] - led_at:.3f} s before the old worker's task ended")


# -- the store going away --------------------------------------------------------------------------


def test_store_outage_demotes_the_leader_and_it_rejoins(cluster: Cluster) -> None:
    store = RedisServer()  # the election's own store; the broker stays up
    try:
        (worker,) = cluster.start(["w1"], leaderfeed_backend=store.url)  # store down at start
        assert cluster.send("plain", "w1", "during start outage").get(timeout=10)
        assert not cluster.probe("w1")["leader"]

        store.start()
        wait_until(lambda: cluster.probe("w1")["leader"], 15, interval=0.05, message="leads")

        store.stop()
        lost_at = time.monotonic()
        wait_until(lambda: not cluster.probe("w1")["leader"], 5, interval=0.01, message="demoted")
        demoted = time.monotonic() - lost_at
        assert demoted < TIMING["leaderfeed_election_timeout_min"] + 0.5
        assert cluster.send("plain", "w1", "during outage").get(timeout=10) == "during outage"
        assert final_state(cluster.send("leader_work", "w1", "outage")) == SKIPPED

        store.start()  # empty: the record is gone too
        wait_until(lambda: cluster.probe("w1")["leader"], 15, interval=0.05, message="leads again")
        assert cluster.send("leader_work", "w1", "back").get(timeout=10)["label"] == "back"
        assert "Traceback" not in worker.log()
        print(f"store outage: demoted {demoted:.3f} s after the store died")
    finally:
        store.close()


# -- configuration -------------------------------------------------------------------------------

MISCONFIGURED = [
    pytest.param({"leaderfeed_backend": "redsi://:PASSWORD-x1@localhost/0"}, [], id="bad-scheme"),
    pytest.param({}, ["--leaderfeed-heartbeat-interval", "5"], id="bad-timing-option"),
]


@pytest.mark.parametrize(("conf", "args"), MISCONFIGURED)
def test_misconfiguration_stops_the_worker_at_start_with_one_line(
    cluster: Cluster, conf: dict[str, Any], args: list[str]
) -> None:
    (worker,) = cluster.start(["w1"], *args, wait=False, **conf)
    assert worker.process.wait(30) == 1
    log = worker.log()
    errors = [line for line in log.splitlines() if line.startswith("Error: leaderfeed: ")]
    assert len(errors) == 1, log
    assert "Traceback" not in log
    assert "PASSWORD-x1" not in log


def test_cli_and_inspect_never_print_the_store_password(cluster: Cluster) -> None:
    secret = f"PASSWORD-{uuid.uuid4().hex[:8]}"
    store = RedisServer(password=secret).start()
    try:
        conf = {"leaderfeed_name": None}  # both come from the command line
        cli = ["--leaderfeed-backend", store.url, "--leaderfeed-name", cluster.name]
        (worker,) = cluster.start(["w1"], *cli, **conf)
        host = cluster.hostname("w1")
        wait_until(lambda: cluster.probe("w1")["leader"], 15, interval=0.05, message="leads")

        commands = {
            "conf": ["inspect", "conf", "-d", host],
            "stats": ["inspect", "stats", "-d", host],
            "leaderfeed": ["inspect", "leaderfeed", "-d", host],
            "report": ["report"],
            "status": ["leaderfeed", "status", "--backend", store.url, "--name", cluster.name],
        }
        env = {**os.environ, **cluster.env(leaderfeed_name=None), "PYTHONPATH": str(REPO)}
        running: dict[str, subprocess.Popen[str]] = {}
        try:
            for name, argv in commands.items():  # together: each takes a second to start
                running[name] = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", APP, *argv],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            outputs = {
                name: process.communicate(timeout=60)[0] for name, process in running.items()
            }
        finally:
            for process in running.values():
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
    finally:
        store.close()

    for name, output in [*outputs.items(), ("worker log", worker.log())]:
        assert secret not in output, name
    assert '"leaderfeed_backend": "redis://:********@127.0.0.1' in outputs["conf"], outputs["conf"]
    assert cluster.name in outputs["conf"]  # the CLI option reached app.conf
    assert '"role": "leader"' in outputs["leaderfeed"], outputs["leaderfeed"]
    assert '"role": "leader"' in outputs["stats"], outputs["stats"]
    assert re.search(rf"^holder +{re.escape(host)}$", outputs["status"], re.M), outputs["status"]
    assert "redis://:***@" in outputs["status"]
