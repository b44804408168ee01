"""``@leader_only`` overhead: the same empty task with and without the decorator, through a
real prefork worker that leads (``bench/leader_only_app.py``). The method: bench/README.md."""

from __future__ import annotations

import functools
import json
import re
import statistics
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.processes import Proc, python, wait_for
from harness import celery_log

KINDS = ("plain", "guarded")
HOLD_SECONDS = 2.0
CHECK_CALLS = 20000
_DONE = re.compile(
    r"^\[(?P<at>[\d-]+ [\d:,]+): INFO/ForkPoolWorker-\d+\] "
    r"Task bench\.(?P<kind>\w+)\[[\w-]+\] succeeded in (?P<runtime>[\d.e-]+)s"
)


def run(redis_url: str, tasks: int, rounds: int, workdir: Path) -> dict[str, Any]:
    name = f"lo-{uuid.uuid4().hex[:8]}"
    env = {"BENCH_REDIS_URL": redis_url, "BENCH_NAME": name}
    command = python(
        "-m", "celery", "-A", "bench.leader_only_app", "worker", "-P", "prefork", "-c", "1",
        "-n", f"{name}@%h", "-l", "INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    )  # fmt: skip
    worker = Proc(command, workdir / f"{name}.log", env)
    client = Celery("bench_client", broker=redis_url, set_as_current=False)
    store = redis.Redis.from_url(redis_url)
    per_round = tasks // rounds
    round_times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        wait_for(lambda: "became leader" in worker.log(), 60, "the worker to lead", 0.05)
        done = 0
        for _ in range(rounds):
            for kind in KINDS:
                client.send_task("bench.hold", args=[HOLD_SECONDS], queue=name)
                for index in range(per_round):
                    client.send_task(f"bench.{kind}", args=[index], queue=name)
                done += per_round
                finished = wait_for(
                    functools.partial(_completions, worker, done), 120, f"{kind} tasks", 0.05
                )[-per_round:]
                span = (finished[-1][0] - finished[0][0]).total_seconds()
                round_times[kind].append(span / (per_round - 1))
        client.send_task("bench.measure_check", args=[CHECK_CALLS], queue=name)
        raw = wait_for(
            functools.partial(_pop, store, f"{name}:check"), 120, "the in-process timing", 0.05
        )
        check: dict[str, Any] = json.loads(raw)
        skipped = "skipped" in worker.log()
    finally:
        worker.stop(grace=15)
        store.close()
    runtimes: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _, kind, runtime in _completions(worker) or []:
        runtimes[kind].append(runtime)
    result: dict[str, Any] = {
        "tasks_per_kind": per_round * rounds,
        "rounds": rounds,
        "pool": "prefork, concurrency 1",
        "any_skipped": skipped,
        "check_in_pool_process": check,
    }
    for kind in KINDS:
        result[kind] = {
            "runtime_median_s": statistics.median(runtimes[kind]),
            "runtime_mean_s": statistics.fmean(runtimes[kind]),
            "wall_per_task_s": statistics.median(round_times[kind]),
            "wall_per_task_by_round_s": round_times[kind],
        }
    plain, guarded = result["plain"], result["guarded"]
    compared = ("runtime_median_s", "runtime_mean_s", "wall_per_task_s")
    result["difference"] = {key: guarded[key] - plain[key] for key in compared}
    result["difference"]["direct_call_s"] = check["guarded.run(0)"] - check["plain.run(0)"]
    return result


def _completions(worker: Proc, at_least: int = 0) -> list[tuple[datetime, str, float]] | None:
    """(finished at, kind, Celery's runtime) of every measured task, once there are enough."""
    found = []
    for line in worker.log().splitlines():
        match = _DONE.match(line)
        if match and match["kind"] in KINDS:
            at = celery_log.logged_at(match["at"])
            found.append((at, match["kind"], float(match["runtime"])))
    return found if len(found) >= at_least else None


def _pop(store: redis.Redis, key: str) -> bytes | None:
    value = store.lpop(key)
    return value if isinstance(value, bytes) else None
