"""The leader queue on a Redis broker: ``delay()`` to the body starting, ``@leader_only``
against a plain task, and how long a handover (``elect``, SIGTERM) takes to move consumption
of the leader queue to the next leader. Real workers (``bench/leader_queue_app.py``); the
method: bench/README.md."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from celery import Celery

import celery_leaderfeed
from bench.processes import Proc, python, wait_for
from bench.stats import summary
from celery_leaderfeed import LeaderFeed, leader_only
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.timing import Timing

WORKERS = 3
#: While leadership moves, a leader-only task is sent this often.
STREAM_EVERY = 0.01
KINDS = ("leader_only", "plain")
HANDOVERS = ("elect", "sigterm")
APP = "bench.leader_queue_app"


def run(redis_url: str, samples: int, handovers: int, workdir: Path) -> dict[str, Any]:
    timing = Timing()  # the package defaults, as a worker without leaderfeed settings runs
    bench = _Workers(redis_url, workdir)
    try:
        for _ in range(WORKERS):
            bench.add()
        bench.wait_leader_consuming()
        latency = bench.latency(samples)
        moved = bench.handovers(handovers)
    finally:
        bench.close()
    by_kind = {kind: summary(values) for kind, values in latency.items()}
    return {
        "settings": {
            "workers": WORKERS,
            "pool": "prefork, concurrency 2",
            "heartbeat_interval": timing.heartbeat_interval,
            "election_timeout_min": timing.election_timeout_min,
            "election_timeout_max": timing.election_timeout_max,
            "samples": samples,
            "handovers": handovers,
            "stream_every_s": STREAM_EVERY,
        },
        "latency": {
            **by_kind,
            "samples_s": latency,
            "difference_median_s": by_kind["leader_only"]["median"] - by_kind["plain"]["median"],
        },
        "handover": {how: {"moved_s": moved[how], "summary": summary(moved[how])} for how in moved},
    }


def _sender_only(*args: Any) -> None:
    raise AssertionError("the bench only sends")


class _Workers:
    """The election's workers, a client that routes like their app, and what the bodies push."""

    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.url = redis_url
        self.workdir = workdir
        self.name = f"lq-{uuid.uuid4().hex[:8]}"
        self.runs = f"{self.name}:runs"
        self.env = {"BENCH_REDIS_URL": redis_url, "BENCH_NAME": self.name}
        self.redis = redis.Redis.from_url(redis_url)
        self.store = backend_from_url(redis_url, name=self.name, timeout=2.0)
        self.store.connect()
        self.client = Celery("bench_client", broker=redis_url, set_as_current=False)
        self.client.conf.update(leaderfeed_name=self.name, task_default_queue=self.name)
        celery_leaderfeed.install(self.client)  # routes the leader-only task as its app does
        self.tasks = {
            "leader_only": self.client.task(name="bench.lq_leader", shared=False)(
                leader_only(_sender_only)
            ),
            "plain": self.client.task(name="bench.lq_plain", shared=False)(_sender_only),
        }
        self.workers: dict[str, Proc] = {}

    def add(self) -> str:
        node = f"w{len(self.workers) + 1}.{self.name}@localhost"
        command = python(
            "-m", "celery", "-A", APP, "worker", "-P", "prefork", "-c", "2", "-n", node,
            "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        )  # fmt: skip
        worker = self.workers[node] = Proc(command, self.workdir / f"{node}.log", self.env)
        wait_for(lambda: "ready." in worker.log(), 60, f"{node} ready", 0.05)
        return node

    def leader(self) -> str | None:
        record = self.store.read().record
        return record.holder if record is not None else None

    def wait_leader_consuming(self) -> str:
        def consuming() -> str | None:
            node = self.leader()
            if node in self.workers and "consuming the leader queue" in self.workers[node].log():
                return node
            return None

        return wait_for(consuming, 60, "a leader consuming the leader queue", 0.05)

    def latency(self, samples: int) -> dict[str, list[float]]:
        """One task at a time, the kinds alternating: its body's start minus its send."""
        found: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.redis.delete(self.runs)
        for index in range(samples):
            for kind in KINDS if index % 2 == 0 else KINDS[::-1]:
                self.tasks[kind].delay(time.monotonic())
                popped = self.redis.blpop([self.runs], timeout=30)
                if popped is None:
                    raise TimeoutError(f"no {kind} body within 30 s")
                run = json.loads(popped[1])
                found[run["kind"]].append(run["start"] - run["sent"])
        return found

    def handovers(self, count: int) -> dict[str, list[float]]:
        """With leader-only tasks streaming in, move leadership ``count`` times each way; each
        figure: the first body on another worker, from the instant the handover began."""
        moved: dict[str, list[float]] = {how: [] for how in HANDOVERS}
        self.redis.delete(self.runs)
        stop = threading.Event()
        stream = threading.Thread(target=self._stream, args=(stop,), daemon=True)
        stream.start()
        try:
            for _ in range(count):
                for how in HANDOVERS:
                    old = self.wait_leader_consuming()
                    self._wait_body(lambda host, old=old: host == old, time.monotonic())
                    began = self._elect_next(old) if how == "elect" else self._terminate(old)
                    start = self._wait_body(lambda host, old=old: host != old, began)
                    moved[how].append(start - began)
                    if how == "sigterm":
                        self.workers[old].wait(30)
                        self.add()
        finally:
            stop.set()
            stream.join(5)
        return moved

    def _stream(self, stop: threading.Event) -> None:
        while not stop.wait(STREAM_EVERY):
            self.tasks["leader_only"].delay(time.monotonic())

    def _wait_body(self, on: Any, since: float) -> float:
        """The start of the first body that ``on(host)`` accepts, begun at or after ``since``."""

        def first() -> float | None:
            starts = [
                run["start"]
                for run in map(json.loads, self.redis.lrange(self.runs, 0, -1))
                if on(run["host"]) and run["start"] >= since
            ]
            return min(starts) if starts else None

        return wait_for(first, 30, "a body on the leader", 0.02)

    def _elect_next(self, old: str) -> float:
        """Hand leadership to the next worker (a short-lived member asks); when it asked."""
        alive = [node for node, worker in self.workers.items() if worker.alive()]
        target = alive[(alive.index(old) + 1) % len(alive)]
        member = LeaderFeed(
            self.url,
            name=self.name,
            member_id=f"bench-elector-{uuid.uuid4().hex[:6]}",
            election_timeout_min=30.0,  # it never claims for itself in its few milliseconds
            election_timeout_max=31.0,
        )
        member.start()
        try:
            began = time.monotonic()
            member.elect(target, timeout=30)
        finally:
            member.stop()
        return began

    def _terminate(self, old: str) -> float:
        return self.workers[old].signal(signal.SIGTERM)

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop(grace=10)
        self.redis.delete(self.runs)
        self.store.close()
        self.redis.close()
        self.client.close()
