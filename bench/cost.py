"""Cost of the election: store commands, CPU and memory in steady state; cold-start convergence.

Per backend and per size N (3, 50, 200 members), at the fast setting the idle-member target is
about (heartbeat 0.25 s, election timeout 0.75-1.0 s):

* Members: N = 3 are 3 processes of one member each; larger N are threads of 4 processes
  (``bench/cost_members.py``; each member is a full LeaderFeed with its own connections and
  threads, as separate processes would have).
* Cold start: every member is built first; then the bench sends SIGUSR1 to all processes at
  one instant ``T0`` (the store holds no record) and every member starts (connect, subscribe,
  read, then elect). Two instants are reported, both from the members' own output (taken on
  their engine threads): when one member *holds the record* (its claim acknowledged) and when
  the leader *may act* (its lease valid). A claim over a missing record is acted on only
  ``election_timeout_min`` after it was sent (docs/design.md, "Three ways to become leader at
  once"), so the second is the first plus about that much. Contested elections: claims sent
  minus claims won, summed over all members (``LeaderFeed.stats``), and how many members ever
  held the record.
* Steady state: after convergence and a settling time, a window of W seconds: CPU of every
  member process (psutil user+system time) divided by wall time and by the members it hosts -
  for N = 3 the leader's process and the idle followers' separately; CPU of the server
  process; RSS of every member process (per member for the threaded ones: RSS / members).
  Store load: Redis ``INFO commandstats`` deltas (commands run inside the Lua scripts counted
  as Redis counts them), MongoDB ``serverStatus`` opcounters deltas (SecantusDB implements
  them), nothing server-side for the RethinkDB wire server (not measured). For every backend
  the engine's own store calls per second (renewals, claims, reads from ``LeaderFeed.stats``)
  are given too.
"""

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

from bench.processes import Proc, python_command, wait_for
from bench.servers import Store, store

HEARTBEAT, LOW, HIGH = 0.25, 0.75, 1.0
PROCESSES_FOR_THREADS = 4


def layout(members: int) -> list[int]:
    """Members per process: one each up to 3, else spread over 4 processes."""
    if members <= 3:
        return [1] * members
    base, extra = divmod(members, PROCESSES_FOR_THREADS)
    return [base + (index < extra) for index in range(PROCESSES_FOR_THREADS)]


def run(
    backends: list[str], sizes: dict[str, list[int]], window: float, settle: float, workdir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in backends:
        results[backend] = {}
        try:
            with store(backend) as where:
                for members in sizes.get(backend, []):
                    print(f"  cost: {backend}, N={members}", flush=True)
                    try:
                        cell = _cell(where.fresh(), members, window, settle, workdir)
                    except Exception as exc:  # noqa: BLE001 - reported on the page
                        cell = {"error": f"{type(exc).__name__}: {exc}"}
                        print(f"    FAILED: {exc}", flush=True)
                    else:
                        print(f"    {_line(cell)}", flush=True)
                    results[backend][str(members)] = cell
        except Exception as exc:  # noqa: BLE001
            results[backend]["error"] = f"{type(exc).__name__}: {exc}"
            print(f"    {backend}: FAILED: {exc}", flush=True)
    return {
        "settings": {
            "heartbeat_interval": HEARTBEAT,
            "election_timeout_min": LOW,
            "election_timeout_max": HIGH,
            "window_s": window,
            "settle_s": settle,
            "threads_over_processes": PROCESSES_FOR_THREADS,
        },
        "backends": results,
    }


def _line(cell: dict[str, Any]) -> str:
    cold, steady = cell["cold_start"], cell["steady"]
    return (
        f"holds {cold['holds_s']:.3f} s, acts {cold['acts_s']:.3f} s, claims "
        f"{cold['claims']}/{cold['claims_won']} won, leaders {cold['leaders']}; cpu/member "
        f"{steady['cpu_pct_per_member']:.2f}%, idle follower {steady['cpu_pct_idle_follower']}, "
        f"store ops/s {steady['store_ops_per_s']}, "
        f"rss/member {steady['rss_mib_per_member']:.1f} MiB"
    )


class _Host:
    """One member process."""

    def __init__(self, where: Store, name: str, index: int, count: int, workdir: Path) -> None:
        self.count = count
        self.prefix = f"p{index}"
        self.out = workdir / f"{name}-{self.prefix}"
        command = python_command(
            "-m", "bench.cost_members", "--url", where.url,
            "--options", json.dumps(dict(where.options)), "--name", name,
            "--prefix", self.prefix, "--count", str(count), "--heartbeat", str(HEARTBEAT),
            "--min", str(LOW), "--max", str(HIGH), "--out", str(self.out),
        )  # fmt: skip
        self.proc = Proc(command, workdir / f"{name}-{self.prefix}.log", label=self.prefix)

    def lines(self) -> list[list[str]]:
        """The process's own lines (``<monotonic> <word> ...``); log records are skipped."""
        found = []
        for line in self.proc.log().splitlines():
            parts = line.split()
            if len(parts) >= 2 and _is_number(parts[0]):
                found.append(parts)
        return found

    def events(self, what: str) -> list[tuple[float, str]]:
        return [(float(p[0]), p[2]) for p in self.lines() if p[1] == what and len(p) >= 3]

    def terms(self, until: float) -> set[str]:
        """Terms this process's members held (claims acknowledged) before ``until``."""
        return {
            p[3] for p in self.lines() if p[1] == "holds" and len(p) >= 4 and float(p[0]) < until
        }

    def has(self, marker: str) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"member process exited:\n{self.proc.log()[-3000:]}")
        return any(p[1] == marker for p in self.lines())

    def written(self, label: str) -> bool:
        return Path(f"{self.out}-{label}.json").exists()

    def stats(self, label: str) -> dict[str, dict[str, int]]:
        path = Path(f"{self.out}-{label}.json")
        data: dict[str, dict[str, int]] = json.loads(path.read_text())["stats"]
        return data


def _cell(
    where: Store, members: int, window: float, settle: float, workdir: Path
) -> dict[str, Any]:
    name = f"cost-{uuid.uuid4().hex[:8]}"
    hosts = [_Host(where, name, i, n, workdir) for i, n in enumerate(layout(members))]
    try:
        for host in hosts:
            wait_for(functools.partial(host.has, "ready"), 120, "member processes built", 0.05)
        started = time.monotonic()
        for host in hosts:
            host.proc.signal(signal.SIGUSR1)
        wait_for(lambda: any(h.events("acts") for h in hosts), 60, "a leader that acts", 0.01)
        time.sleep(settle)
        cold = _cold_start(hosts, started)
        steady = _steady(hosts, where, window)
        steady_end = time.monotonic()
        # Counted before shutdown: as members stop one by one, each resignation lets a
        # follower still running claim the vacancy at once - claims of the teardown.
        at_end = [host.stats("2") for host in hosts]
        for host in hosts:
            host.proc.signal(signal.SIGTERM)
        for host in hosts:
            host.proc.wait(60)
    finally:
        for host in hosts:
            host.proc.stop()
    cold["claims"] = sum(s["claims"] for f in at_end for s in f.values())
    cold["claims_won"] = sum(s["claims_won"] for f in at_end for s in f.values())
    cold["contested_claims"] = cold["claims"] - cold["claims_won"]
    # Trouble from the cold start to the end of the window: a leader losing its lease,
    # feeds lost (subscribe errors, deaf feeds).
    steady["renewals_failed"] = sum(s["renewals_failed"] for f in at_end for s in f.values())
    steady["resubscribes"] = sum(s["resubscribes"] for f in at_end for s in f.values())
    steady["terms"] = len({term for h in hosts for term in h.terms(until=steady_end)})
    return {
        "members": members,
        "layout": layout(members),
        "cold_start": cold,
        "steady": steady,
    }


def _cold_start(hosts: list[_Host], started: float) -> dict[str, Any]:
    holds = sorted(event for host in hosts for event in host.events("holds"))
    acts = sorted(event for host in hosts for event in host.events("acts"))
    took = [float(p[2]) for h in hosts for p in h.lines() if p[1] == "go" and len(p) >= 3]
    return {
        "holds_s": holds[0][0] - started,
        "acts_s": acts[0][0] - started,
        "leader": acts[0][1],
        "leaders": len({member for _, member in holds}),
        #: How long the slowest process took to call start() on all its members.
        "start_calls_took_s": max(took) if took else None,
    }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _steady(hosts: list[_Host], where: Store, window: float) -> dict[str, Any]:
    server = where.server_process()
    leader = next(h for h in hosts if h.events("acts"))
    counters = _store_counters(where)
    cpu = [_cpu(h.proc.handle) for h in hosts]
    server_cpu = _cpu(server) if server is not None else None
    for host in hosts:
        host.proc.signal(signal.SIGUSR2)
    began = time.monotonic()
    time.sleep(window)
    for host in hosts:
        host.proc.signal(signal.SIGUSR2)
    cpu_end = [_cpu(h.proc.handle) for h in hosts]
    server_cpu_end = _cpu(server) if server is not None else None
    elapsed = time.monotonic() - began
    counters_end = _store_counters(where)
    rss = [h.proc.handle.memory_info().rss / 2**20 for h in hosts]
    for host in hosts:
        wait_for(functools.partial(host.written, "2"), 30, "stats", 0.02)
    delta = {key: 0 for key in ("renewals", "renewals_failed", "claims", "reads")}
    delta |= {"feed_events": 0, "resubscribes": 0, "claims_won": 0}
    for host in hosts:
        first, second = host.stats("1"), host.stats("2")
        for member, stats in second.items():
            for key in delta:
                delta[key] += stats[key] - first[member][key]
    engine = sum(delta[k] for k in ("renewals", "renewals_failed", "claims", "reads"))
    per_process = [
        {
            "members": h.count,
            "leader": h is leader,
            "cpu_pct": 100 * (end - begin) / elapsed,
            "cpu_pct_per_member": 100 * (end - begin) / elapsed / h.count,
            "rss_mib": r,
        }
        for h, begin, end, r in zip(hosts, cpu, cpu_end, rss, strict=True)
    ]
    members = sum(h.count for h in hosts)
    followers = [p for p in per_process if not p["leader"] and p["members"] == 1]
    ops = _ops_delta(counters, counters_end, elapsed)
    return {
        "window_s": elapsed,
        "processes": per_process,
        "cpu_pct_per_member": sum(p["cpu_pct"] for p in per_process) / members,
        "cpu_pct_idle_follower": (max(p["cpu_pct"] for p in followers) if followers else None),
        "cpu_pct_leader_process": next(p["cpu_pct"] for p in per_process if p["leader"]),
        "server_cpu_pct": (
            None
            if server_cpu is None or server_cpu_end is None
            else 100 * (server_cpu_end - server_cpu) / elapsed
        ),
        "store_ops_per_s": None if ops is None else round(sum(ops.values()), 1),
        "store_ops_by_kind": ops,
        "store_ops_source": _ops_source(where),
        "engine_calls_per_s": engine / elapsed,
        "feed_events_per_s": delta["feed_events"] / elapsed,
        #: What happened inside the window only (the cold start excluded).
        "in_window": delta,
        "rss_mib_per_process": max(rss),
        "rss_mib_per_member": sum(rss) / members,
    }


def _ops_source(where: Store) -> str:
    if where.backend == "redis":
        return "Redis INFO commandstats (calls), minus the bench's own INFO and HELLO"
    if where.backend.startswith("mongodb"):
        return "serverStatus opcounters, minus the bench's own serverStatus"
    return "not measured (the RethinkDB wire server keeps no counters)"


def _store_counters(where: Store) -> dict[str, int] | None:
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


def _ops_delta(
    before: dict[str, int] | None, after: dict[str, int] | None, elapsed: float
) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    # The bench's own INFO (and the HELLO of its second connection) / serverStatus.
    own = {"info": 1, "hello": 1, "command": 1}
    delta = {
        key: (after[key] - before.get(key, 0) - own.get(key, 0)) / elapsed
        for key in after
        if after[key] - before.get(key, 0) - own.get(key, 0) > 0
    }
    return {key: round(value, 1) for key, value in sorted(delta.items())}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
