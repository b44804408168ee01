"""Graceful handover (the leader's ``stop()``) and crash failover (``kill -9`` of the leader's
process), each timed to the first act of another member. The method: bench/README.md."""

from __future__ import annotations

import functools
import random
import threading
import time
from pathlib import Path
from typing import Any

from bench.cluster import MemberCluster, run_trials
from bench.processes import attempt, wait_for
from bench.servers import Store, store
from bench.stats import summary
from celery_leaderfeed import LeaderFeed

#: name -> (heartbeat, election timeout min, max); handover runs at the package defaults.
TIMINGS = {"default": (1.0, 3.0, 4.0), "fast": (0.25, 0.75, 1.0)}
MEMBERS = 3


def _settings(timing: tuple[float, float, float]) -> dict[str, float]:
    keys = ("heartbeat_interval", "election_timeout_min", "election_timeout_max")
    return dict(zip(keys, timing, strict=True))


def _say(cell: dict[str, Any]) -> dict[str, Any]:
    if s := cell.get("summary"):
        figures = ", ".join(f"{key} {s[key]:.4f} s" for key in ("median", "p95", "max"))
        print(f"    {figures}, n={s['n']}", flush=True)
    return cell


def _stop(cluster: MemberCluster) -> tuple[str, float]:
    leader = cluster.leader(timeout=cluster.high + 5)
    return leader, cluster.stop_gracefully(leader)


def _kill(cluster: MemberCluster) -> tuple[str, float]:
    cluster.leader(timeout=cluster.high + 5)
    time.sleep(random.uniform(0, cluster.heartbeat))  # the kill lands anywhere between renewals
    leader = cluster.leader(timeout=cluster.high + 5)
    return leader, cluster.kill(leader)


def handover(backends: list[str], trials: int, workdir: Path) -> dict[str, Any]:
    timing = TIMINGS["default"]

    def measure(backend: str) -> dict[str, Any]:
        with store(backend) as where:
            if backend == "memory":
                return _in_process(where, trials, timing)
            cluster = MemberCluster(where, workdir, timing, MEMBERS)
            return run_trials(cluster, trials, _stop, settle=0.3)

    return {
        "settings": {**_settings(timing), "members": MEMBERS, "trials": trials},
        "backends": {
            backend: _say(attempt(f"handover: {backend}", functools.partial(measure, backend)))
            for backend in backends
        },
    }


def failover(backends: list[str], trials: dict[str, int], workdir: Path) -> dict[str, Any]:
    def measure(backend: str) -> dict[str, Any]:
        with store(backend) as where:
            cells = {}
            for name, timing in TIMINGS.items():
                print(f"    {name} timing, {trials[name]} trials", flush=True)
                cluster = MemberCluster(where.fresh(), workdir, timing, MEMBERS)
                cells[name] = _say(run_trials(cluster, trials[name], _kill, settle=0.5))
            return cells

    return {
        "settings": {name: _settings(timing) for name, timing in TIMINGS.items()},
        "trials": trials,
        "members": MEMBERS,
        "backends": {
            backend: attempt(f"failover: {backend}", functools.partial(measure, backend))
            for backend in backends
        },
    }


class _Observed:
    """The instant each member's lease (by term) first became valid, taken on its engine thread."""

    def __init__(self) -> None:
        self.valid_at: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def __call__(self, feed: LeaderFeed) -> None:
        lease, now = feed.lease, time.monotonic()
        if lease.term is not None and lease.valid(now):
            with self._lock:
                self.valid_at.setdefault((feed.id, lease.term), now)

    def first_after(self, moment: float, other_than: str) -> float | None:
        with self._lock:
            later = [at for (m, _), at in self.valid_at.items() if at > moment and m != other_than]
        return min(later, default=None)


def _in_process(where: Store, trials: int, timing: tuple[float, float, float]) -> dict[str, Any]:
    """The memory backend's handover: its members are threads of this process."""
    heartbeat, low, high = timing
    observed = _Observed()
    feeds: dict[str, LeaderFeed] = {}

    def add(member: str) -> None:
        feed = LeaderFeed(
            where.url,
            name="handover",
            member_id=member,
            heartbeat_interval=heartbeat,
            election_timeout_min=low,
            election_timeout_max=high,
        )
        feed.add_observer(observed)
        feeds[member] = feed.start()

    def leader() -> str | None:
        return next((member for member, feed in feeds.items() if feed.is_leader), None)

    samples: list[float] = []
    try:
        for index in range(MEMBERS):
            add(f"t{index}")
        for index in range(MEMBERS, MEMBERS + trials):
            old = wait_for(leader, high + 5, "an in-process leader")
            stopped_at = time.monotonic()
            feeds.pop(old).stop()
            successor = functools.partial(observed.first_after, stopped_at, old)
            at = wait_for(successor, high + 5, "the in-process successor", 0.001)
            samples.append(at - stopped_at)
            add(f"t{index}")
            time.sleep(0.2)
    finally:
        for feed in feeds.values():
            feed.stop()
    return {"samples": samples, "summary": summary(samples), "safety_violations": []}
