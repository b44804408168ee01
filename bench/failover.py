"""Crash failover: from ``kill -9`` of the leader's process to a new leader acting.

Per backend and per timing setting, three members run as separate processes (the fault
suite's member, see ``bench/cluster.py``). A trial waits a random fraction of a heartbeat (so
the kill lands at a random point between renewals), sends SIGKILL to the member that is acting
and takes the first act of another member: the figure is that act's CLOCK_MONOTONIC minus the
instant the signal was sent. A follower claims once it has seen the record unchanged for a
random time in ``[election_timeout_min, election_timeout_max]`` counted from the last renewal
it saw - which came before the kill - so a failover is expected to take at most
``election_timeout_max`` plus one claim round trip (and up to 3 ms of act sampling).

The in-memory backend has no crash failover: its members share one process, and killing it
kills the store with them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from bench.cluster import MemberCluster, run_trials
from bench.servers import store

#: name -> (heartbeat, election timeout min, max)
TIMINGS = {"default": (1.0, 3.0, 4.0), "fast": (0.25, 0.75, 1.0)}
REPLACEMENT_SETTLE = 0.5


def run(backends: list[str], trials: dict[str, int], workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in backends:
        results[backend] = {}
        try:
            with store(backend) as where:
                for timing, (heartbeat, low, high) in TIMINGS.items():
                    print(f"  failover: {backend}, {timing}, {trials[timing]} trials", flush=True)
                    cluster = MemberCluster(
                        where.fresh(), workdir, heartbeat=heartbeat, low=low, high=high
                    )
                    cell = _trials(cluster, trials[timing])
                    results[backend][timing] = cell
                    s = cell["summary"]
                    print(
                        f"    median {s['median']:.3f} s, p95 {s['p95']:.3f} s, "
                        f"max {s['max']:.3f} s (n={s['n']})",
                        flush=True,
                    )
        except Exception as exc:  # noqa: BLE001 - reported on the page as "not measured"
            results[backend]["error"] = f"{type(exc).__name__}: {exc}"
            print(f"    {backend}: FAILED: {exc}", flush=True)
    return {
        "settings": {
            name: {"heartbeat_interval": h, "election_timeout_min": lo, "election_timeout_max": hi}
            for name, (h, lo, hi) in TIMINGS.items()
        },
        "trials": trials,
        "members": 3,
        "backends": results,
    }


def _trials(cluster: MemberCluster, trials: int) -> dict[str, Any]:
    return run_trials(cluster, trials, _trial, REPLACEMENT_SETTLE)


def _trial(cluster: MemberCluster) -> float:
    """One crash: SIGKILL to the acting member at a random point between renewals."""
    cluster.leader(timeout=cluster.high + 5)
    time.sleep(random.uniform(0, cluster.heartbeat))
    leader = cluster.leader(timeout=cluster.high + 5)
    killed_at = cluster.kill(leader)
    successor = cluster.wait_successor(killed_at, leader, timeout=cluster.high + 10)
    member = cluster.start_member()
    cluster.wait_started(member)
    time.sleep(REPLACEMENT_SETTLE)
    return successor.at - killed_at
