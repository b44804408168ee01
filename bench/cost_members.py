"""``python -m bench.cost_members``: one process hosting ``--count`` members as threads.

Prints ``ready`` once every member is built and starts them all on SIGUSR1 (one instant for
every process of a cold start); then prints ``<monotonic> holds|acts <member> <term>`` when a
member's claim is acknowledged and when its lease first becomes valid, taken on the engine
thread. SIGUSR2 writes every member's stats to ``<--out>-<n>.json``; SIGTERM stops them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from celery_leaderfeed import LeaderFeed, Role


def say(line: str) -> None:
    """One whole line in one write(2): engine threads print at the same time."""
    os.write(sys.stdout.fileno(), (line + "\n").encode())


class _Watch:
    """Observer printing each member's first acknowledged claim and first valid lease."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, feed: LeaderFeed) -> None:
        now, lease = time.monotonic(), feed.lease
        if lease.role is not Role.LEADER or lease.term is None:
            return
        for what in ("holds", "acts") if lease.valid(now) else ("holds",):
            with self._lock:
                if (feed.id, lease.term, what) in self._seen:
                    continue
                self._seen.add((feed.id, lease.term, what))
            say(f"{now:.6f} {what} {feed.id} {lease.term}")


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--url", "--name", "--prefix", "--out"):
        parser.add_argument(name, required=True)
    for name in ("--heartbeat", "--min", "--max"):
        parser.add_argument(name, type=float, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()

    watch = _Watch()
    feeds = []
    for index in range(args.count):
        feed = LeaderFeed(
            args.url,
            name=args.name,
            member_id=f"{args.prefix}-{index}",
            heartbeat_interval=args.heartbeat,
            election_timeout_min=args.min,
            election_timeout_max=args.max,
            options=json.loads(args.options),
        )
        feed.add_observer(watch)
        feeds.append(feed)

    go, stop, snapshot = threading.Event(), threading.Event(), threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: go.set())
    signal.signal(signal.SIGUSR2, lambda *_: snapshot.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say(f"{time.monotonic():.6f} ready")
    while not go.wait(0.5):
        if stop.is_set():
            return
    began = time.monotonic()
    for feed in feeds:
        feed.start(retry=True)
    say(f"{began:.6f} go {time.monotonic() - began:.6f}")
    snapshots = 0
    while not stop.wait(0.05):
        if snapshot.is_set():
            snapshot.clear()
            snapshots += 1
            stats = {feed.id: dataclasses.asdict(feed.stats) for feed in feeds}
            written = Path(f"{args.out}-{snapshots}.tmp")
            written.write_text(json.dumps({"stats": stats}))
            written.replace(written.with_suffix(".json"))  # whole, once the bench sees it
    for feed in feeds:
        feed.stop()


if __name__ == "__main__":
    main()
