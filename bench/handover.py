"""Graceful handover: from the leader's ``stop()`` to the moment the new leader may act.

Per backend, three members run as separate processes (``bench/cluster.py``: the fault suite's
member, which records an *act* every 3 ms while its lease is valid). A trial sends SIGTERM to
the member that is acting; that member calls ``feed.stop()`` (logging the monotonic instant of
the call), stops acting and resigns, leaving the record vacant. The figure is the first act of
another member minus that instant: the resignation, the change feed's notification, the
successor's claim and its acknowledgement, plus up to one 3 ms sampling period of the
successor (the figure is an upper bound by at most ~3 ms). A fresh member replaces the stopped
one and gets 0.3 s after it started before the next trial, so every trial has three members.

``memory`` (the floor: no network, no serialisation) cannot span processes: its three members
are threads of the bench process, and the instant each lease becomes valid is taken exactly on
the engine thread (an observer), so it carries no sampling error.

A trial is aborted - recorded with its reason, not counted, and replaced by another - when a
member does not exit within 5 s of SIGTERM, or a member dies without being asked (the machine
may be shared); the page lists them.

Settings: the package defaults (heartbeat 1.0 s, election timeout 3.0-4.0 s); a graceful
handover does not wait for any of them.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

from bench.cluster import MemberCluster, run_trials
from bench.processes import wait_for
from bench.servers import Store, store
from bench.stats import summary
from celery_leaderfeed import LeaderFeed

HEARTBEAT, LOW, HIGH = 1.0, 3.0, 4.0
#: Time a replacement member gets after it started (imported, feed starting), before the next trial.
REPLACEMENT_SETTLE = 0.3


def run(backends: list[str], trials: int, workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in backends:
        print(f"  handover: {backend}, {trials} trials", flush=True)
        try:
            with store(backend) as where:
                if backend == "memory":
                    results[backend] = _in_process(where, trials)
                else:
                    results[backend] = _processes(where, trials, workdir)
        except Exception as exc:  # noqa: BLE001 - reported on the page as "not measured"
            results[backend] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"    {backend}: FAILED: {exc}", flush=True)
            continue
        print(f"    {_line(results[backend])}", flush=True)
    return {
        "settings": {
            "heartbeat_interval": HEARTBEAT,
            "election_timeout_min": LOW,
            "election_timeout_max": HIGH,
            "members": 3,
            "trials": trials,
        },
        "backends": results,
    }


def _line(result: dict[str, Any]) -> str:
    s = result["summary"]
    return (
        f"median {s['median'] * 1000:.1f} ms, p95 {s['p95'] * 1000:.1f} ms, "
        f"max {s['max'] * 1000:.1f} ms (n={s['n']})"
    )


def _processes(where: Store, trials: int, workdir: Path) -> dict[str, Any]:
    cluster = MemberCluster(where, workdir, heartbeat=HEARTBEAT, low=LOW, high=HIGH)
    result = run_trials(cluster, trials, _trial, REPLACEMENT_SETTLE)
    result["method"] = "processes; successor's first act (3 ms sampling) - stop() call"
    return result


def _trial(cluster: MemberCluster) -> float:
    """One handover: SIGTERM to the acting member; a fresh member replaces it afterwards."""
    leader = cluster.leader(timeout=HIGH + 5)
    stopped_at = cluster.stop_gracefully(leader)
    successor = cluster.wait_successor(stopped_at, leader, timeout=HIGH + 5)
    member = cluster.start_member()
    cluster.wait_started(member)
    time.sleep(REPLACEMENT_SETTLE)
    return successor.at - stopped_at


class _Observed:
    """Monotonic instant at which each member's lease (by term) first became valid."""

    def __init__(self) -> None:
        self.valid_at: dict[tuple[str, int], float] = {}
        self._changed = threading.Condition()

    def __call__(self, feed: LeaderFeed) -> None:
        lease = feed.lease
        if lease.term is not None and lease.valid(time.monotonic()):
            key = (feed.id, lease.term)
            with self._changed:
                self.valid_at.setdefault(key, time.monotonic())
                self._changed.notify_all()

    def first_after(self, moment: float, other_than: str) -> tuple[str, float] | None:
        later = [
            (member, at)
            for (member, _), at in self.valid_at.items()
            if at > moment and member != other_than
        ]
        return min(later, key=lambda item: item[1]) if later else None


def _in_process(where: Store, trials: int) -> dict[str, Any]:
    observed = _Observed()
    feeds: dict[str, LeaderFeed] = {}
    count = 0

    def add() -> None:
        nonlocal count
        member = f"t{count}"
        count += 1
        feed = LeaderFeed(
            where.url,
            name="handover",
            member_id=member,
            heartbeat_interval=HEARTBEAT,
            election_timeout_min=LOW,
            election_timeout_max=HIGH,
        )
        feed.add_observer(observed)
        feeds[member] = feed.start()

    samples: list[float] = []
    try:
        for _ in range(3):
            add()

        def leader() -> str | None:
            return next((m for m, feed in feeds.items() if feed.is_leader), None)

        for _ in range(trials):
            current = wait_for(leader, HIGH + 5, "an in-process leader")
            feed = feeds.pop(current)
            stopped_at = time.monotonic()
            feed.stop()
            _, at = wait_for(
                functools.partial(observed.first_after, stopped_at, current),
                HIGH + 5,
                "the in-process successor",
                0.001,
            )
            samples.append(at - stopped_at)
            add()
            time.sleep(0.2)
    finally:
        for feed in feeds.values():
            feed.stop()
    return {
        "samples": samples,
        "summary": summary(samples),
        "safety_violations": [],
        "method": "threads of one process; exact instant the successor's lease became valid",
    }
