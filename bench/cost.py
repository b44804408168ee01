"""Cost of the election: cold-start convergence, then CPU, store load and memory in steady state,
per backend and number of members (hosted by ``bench/cost_members.py``). The method:
bench/README.md."""

from __future__ import annotations

import functools
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pymongo
import redis

from bench.processes import Proc, attempt, python, wait_for
from bench.servers import Store, store

HEARTBEAT, LOW, HIGH = 0.25, 0.75, 1.0
PROCESSES_FOR_THREADS = 4
#: Counters of the engine's store calls, as ``LeaderFeed.stats`` names them.
ENGINE_CALLS = ("renewals", "renewals_failed", "claims", "reads")
#: What the bench itself adds to the server's counters per reading.
OWN_OPS = {"info": 1, "hello": 1, "command": 1}
OPS_SOURCE = {
    "redis": "Redis INFO commandstats (calls), minus the bench's own INFO and HELLO",
    "mongodb": "serverStatus opcounters, minus the bench's own serverStatus",
    "rethinkdb": "not measured (the RethinkDB wire server keeps no counters)",
    "postgresql": "not measured (pg_stat counters are flushed about once a second, too coarse)",
}


def layout(members: int) -> list[int]:
    """Members per process: one each up to 3, else spread over 4 processes."""
    if members <= 3:
        return [1] * members
    base, extra = divmod(members, PROCESSES_FOR_THREADS)
    return [base + (index < extra) for index in range(PROCESSES_FOR_THREADS)]


def run(sizes: dict[str, list[int]], window: float, settle: float, workdir: Path) -> dict[str, Any]:
    """Per backend, a cell for each number of members in ``sizes[backend]``."""

    def measure(backend: str) -> dict[str, Any]:
        cells = {}
        with store(backend) as where:
            for n in sizes[backend]:
                cell = functools.partial(_cell, where.fresh(), n, window, settle, workdir)
                cells[str(n)] = attempt(f"N={n}", cell)
        return cells

    return {
        "settings": {
            "heartbeat_interval": HEARTBEAT,
            "election_timeout_min": LOW,
            "election_timeout_max": HIGH,
            "window_s": window,
            "settle_s": settle,
            "threads_over_processes": PROCESSES_FOR_THREADS,
        },
        "backends": {b: attempt(f"cost: {b}", functools.partial(measure, b)) for b in sizes},
    }


class _Host:
    """One process of members, and what it printed."""

    def __init__(self, where: Store, name: str, index: int, count: int, workdir: Path) -> None:
        self.count = count
        self.out = workdir / f"{name}-p{index}"
        self.proc = Proc(python(
            "-m", "bench.cost_members", "--url", where.url, "--options", json.dumps(where.options),
            "--name", name, "--prefix", f"p{index}", "--count", str(count),
            "--heartbeat", str(HEARTBEAT), "--min", str(LOW), "--max", str(HIGH),
            "--out", str(self.out),
        ), workdir / f"{name}-p{index}.log")  # fmt: skip

    def lines(self, word: str) -> list[list[str]]:
        """The process's own ``<monotonic> <word> ...`` lines (log records are skipped)."""
        found = [line.split() for line in self.proc.log().splitlines()]
        return [p for p in found if p[1:2] == [word] and p[0].replace(".", "", 1).isdigit()]

    def events(self, word: str) -> list[tuple[float, str]]:
        return [(float(p[0]), p[2]) for p in self.lines(word)]

    def ready(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"member process exited:\n{self.proc.log()[-3000:]}")
        return bool(self.lines("ready"))

    def stats(self, snapshot: int) -> dict[str, dict[str, int]] | None:
        path = Path(f"{self.out}-{snapshot}.json")
        return json.loads(path.read_text())["stats"] if path.exists() else None


def _cell(
    where: Store, members: int, window: float, settle: float, workdir: Path
) -> dict[str, Any]:
    name = f"cost-{uuid.uuid4().hex[:8]}"
    hosts = [_Host(where, name, i, n, workdir) for i, n in enumerate(layout(members))]
    try:
        for host in hosts:
            wait_for(host.ready, 120, "member processes built", 0.05)
        started = time.monotonic()
        for host in hosts:
            host.proc.signal(signal.SIGUSR1)
        wait_for(lambda: any(h.events("acts") for h in hosts), 60, "a leader that acts", 0.01)
        time.sleep(settle)
        holds = sorted(event for host in hosts for event in host.events("holds"))
        acts = sorted(event for host in hosts for event in host.events("acts"))
        took = [float(p[2]) for host in hosts for p in host.lines("go")]
        cold: dict[str, Any] = {
            "holds_s": holds[0][0] - started,
            "acts_s": acts[0][0] - started,
            "leader": acts[0][1],
            "leaders": len({member for _, member in holds}),
            "start_calls_took_s": max(took, default=None),  # the slowest process's start() calls
        }
        steady = _steady(hosts, where, window)
        steady_end = time.monotonic()
        # Read before shutdown: as members stop one by one, followers claim each vacancy.
        at_end = [stats for host in hosts for stats in (host.stats(2) or {}).values()]
        for host in hosts:
            host.proc.signal(signal.SIGTERM)
        for host in hosts:
            host.proc.wait(60)
    finally:
        for host in hosts:
            host.proc.stop()
    cold["claims"] = sum(s["claims"] for s in at_end)
    cold["claims_won"] = sum(s["claims_won"] for s in at_end)
    cold["contested_claims"] = cold["claims"] - cold["claims_won"]
    # From the cold start to the end of the window: leases lost, feeds lost, terms begun.
    steady["renewals_failed"] = sum(s["renewals_failed"] for s in at_end)
    steady["resubscribes"] = sum(s["resubscribes"] for s in at_end)
    terms = {p[3] for h in hosts for p in h.lines("holds") if float(p[0]) < steady_end}
    steady["terms"] = len(terms)
    return {"members": members, "layout": layout(members), "cold_start": cold, "steady": steady}


def _cpu(process: psutil.Process | None) -> float:
    times = process.cpu_times() if process is not None else None
    return float(times.user + times.system) if times is not None else 0.0


def _steady(hosts: list[_Host], where: Store, window: float) -> dict[str, Any]:
    """CPU, store operations, engine calls and memory over a window of ``window`` seconds."""
    server = psutil.Process(where.pid) if where.pid is not None else None
    leader = next(h for h in hosts if h.events("acts"))
    counters, cpu, server_cpu = _counters(where), [_cpu(h.proc.handle) for h in hosts], _cpu(server)
    for host in hosts:
        host.proc.signal(signal.SIGUSR2)
    began = time.monotonic()
    time.sleep(window)
    for host in hosts:
        host.proc.signal(signal.SIGUSR2)
    cpu = [(_cpu(h.proc.handle) - before) for h, before in zip(hosts, cpu, strict=True)]
    server_cpu = _cpu(server) - server_cpu
    elapsed = time.monotonic() - began
    ops = _ops(counters, _counters(where), elapsed)
    rss = [h.proc.handle.memory_info().rss / 2**20 for h in hosts]
    delta = dict.fromkeys((*ENGINE_CALLS, "feed_events", "resubscribes", "claims_won"), 0)
    for host in hosts:
        first = host.stats(1) or {}
        second = wait_for(functools.partial(host.stats, 2), 30, "stats", 0.02)
        for member, stats in second.items():
            for key in delta:
                delta[key] += stats[key] - first[member][key]
    per_process = [
        {"members": h.count, "leader": h is leader, "cpu_pct": 100 * used / elapsed,
         "cpu_pct_per_member": 100 * used / elapsed / h.count, "rss_mib": r}
        for h, used, r in zip(hosts, cpu, rss, strict=True)
    ]  # fmt: skip
    members = sum(h.count for h in hosts)
    followers = [p["cpu_pct"] for p in per_process if not p["leader"] and p["members"] == 1]
    return {
        "window_s": elapsed,
        "processes": per_process,
        "cpu_pct_per_member": sum(p["cpu_pct"] for p in per_process) / members,
        "cpu_pct_idle_follower": max(followers, default=None),
        "cpu_pct_leader_process": next(p["cpu_pct"] for p in per_process if p["leader"]),
        "server_cpu_pct": None if server is None else 100 * server_cpu / elapsed,
        "store_ops_per_s": None if ops is None else round(sum(ops.values()), 1),
        "store_ops_by_kind": ops,
        "store_ops_source": OPS_SOURCE[where.backend.partition("-")[0]],
        "engine_calls_per_s": sum(delta[k] for k in ENGINE_CALLS) / elapsed,
        "feed_events_per_s": delta["feed_events"] / elapsed,
        "in_window": delta,  # the window alone, the cold start excluded
        "rss_mib_per_process": max(rss),
        "rss_mib_per_member": sum(rss) / members,
    }


def _counters(where: Store) -> dict[str, int] | None:
    """The server's own operation counters (none for the RethinkDB wire server)."""
    if where.backend == "redis":
        client = redis.Redis.from_url(where.url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}
    if where.backend.startswith("mongodb"):
        mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            where.url, serverSelectionTimeoutMS=5000
        )
        try:
            counters = mongo.admin.command("serverStatus")["opcounters"]
        finally:
            mongo.close()
        return {key: int(value) for key, value in counters.items()}
    return None


def _ops(
    before: dict[str, int] | None, after: dict[str, int] | None, elapsed: float
) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    delta = {key: after[key] - before.get(key, 0) - OWN_OPS.get(key, 0) for key in after}
    return {key: round(n / elapsed, 1) for key, n in sorted(delta.items()) if n > 0}
