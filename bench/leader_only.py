"""``@leader_only`` overhead: the same empty task with and without the decorator.

A real ``celery worker`` (prefork, one pool process, Redis broker on loopback, the
leaderfeed step installed and leading) runs ``tasks`` plain and ``tasks`` guarded tasks, in
alternating rounds. Before each round a ``hold`` task occupies the pool process while the
bench fills the queue, so the round's tasks run back to back. Two figures per kind:

* **runtime**: Celery's own per-task figure ("succeeded in X s" - the tracer's clock around
  the task call, including the decorator), median and mean over all tasks;
* **wall time per task**: (last - first completion) / (n - 1) within a round, from the log
  timestamps (1 ms resolution), i.e. throughput including the broker round trips.

Then ``measure_check`` times, *inside the pool process*, one call of the check
(``current_lease(app).is_leader()``: a read of the worker's shared-memory lease segment) and a
direct call of each task body, best of 5 repeats of ``timeit``.
"""

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

from bench.processes import Proc, python_command, wait_for

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
    command = python_command(
        "-m", "celery", "-A", "bench.leader_only_app", "worker", "-P", "prefork", "-c", "1",
        "-n", f"{name}@%h", "-l", "INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    )  # fmt: skip
    worker = Proc(command, workdir / f"{name}.log", env, label="worker")
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
                wait_for(
                    functools.partial(_completed_at_least, worker, done),
                    120,
                    f"{per_round} {kind} tasks",
                    0.05,
                )
                finished = _completions(worker.log())[-per_round:]
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
    for _, kind, runtime in _completions(worker.log()):
        if kind in runtimes:
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
    result["difference"] = {
        "runtime_median_s": result["guarded"]["runtime_median_s"]
        - result["plain"]["runtime_median_s"],
        "runtime_mean_s": result["guarded"]["runtime_mean_s"] - result["plain"]["runtime_mean_s"],
        "wall_per_task_s": result["guarded"]["wall_per_task_s"]
        - result["plain"]["wall_per_task_s"],
        "direct_call_s": check["guarded.run(0)"] - check["plain.run(0)"],
    }
    return result


def _completions(log: str) -> list[tuple[datetime, str, float]]:
    found = []
    for line in log.splitlines():
        match = _DONE.match(line)
        if match and match["kind"] in KINDS:
            at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
            found.append((at, match["kind"], float(match["runtime"])))
    return found


def _pop(store: redis.Redis, key: str) -> bytes | None:
    value = store.lpop(key)
    return value if isinstance(value, bytes) else None


def _completed_at_least(worker: Proc, count: int) -> bool:
    return len(_completions(worker.log())) >= count
