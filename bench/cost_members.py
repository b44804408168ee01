"""A process hosting ``--count`` election members as threads: ``python -m bench.cost_members``.

Used by ``bench/cost.py``. The members (each a :class:`~celery_leaderfeed.LeaderFeed` with its
own connections and threads) are built first; the process prints ``ready`` and waits for
SIGUSR1, so that every process of a cold start begins at one instant. Then it starts them all,
and prints a line the moment a member's claim is acknowledged (``<monotonic> holds <id>``)
and the moment its lease first becomes valid (``<monotonic> acts <id>``), taken on the
engine thread. SIGUSR2 writes every member's ``stats`` to ``<--out>-<n>.json`` (n = 1, 2, ...)
for the rates of a measuring window; SIGTERM stops every member and writes ``<--out>-final.json``.
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


class _Watch:
    """Observer printing each member's first acknowledged claim and first valid lease."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, feed: LeaderFeed) -> None:
        now = time.monotonic()
        lease = feed.lease
        if lease.role is not Role.LEADER or lease.term is None:
            return
        self._emit(feed.id, lease.term, "holds", now)
        if lease.valid(now):
            self._emit(feed.id, lease.term, "acts", now)

    def _emit(self, member: str, term: int, what: str, now: float) -> None:
        with self._lock:
            if (member, term, what) in self._seen:
                return
            self._seen.add((member, term, what))
        say(f"{now:.6f} {what} {member} {term}")


def say(line: str) -> None:
    """One whole line to stdout in one write(2): engine threads and the main thread print at
    the same time, and ``print`` writes the text and the newline separately."""
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--name", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, required=True)
    parser.add_argument("--min", type=float, required=True)
    parser.add_argument("--max", type=float, required=True)
    parser.add_argument("--out", required=True)
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

    go = threading.Event()
    stop = threading.Event()
    snapshot = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: go.set())
    signal.signal(signal.SIGUSR2, lambda *_: snapshot.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    say(f"{time.monotonic():.6f} ready")
    while not go.wait(0.5):
        if stop.is_set():
            sys.exit(0)
    began = time.monotonic()
    for feed in feeds:
        feed.start(retry=True)
    say(f"{began:.6f} go {time.monotonic() - began:.6f}")
    snapshots = 0
    while not stop.wait(0.05):
        if snapshot.is_set():
            snapshot.clear()
            snapshots += 1
            _write_stats(feeds, f"{args.out}-{snapshots}.json")
    for feed in feeds:
        feed.stop()
    _write_stats(feeds, f"{args.out}-final.json")
    say(f"{time.monotonic():.6f} stopped")


def _write_stats(feeds: list[LeaderFeed], path: str) -> None:
    stats = {feed.id: dataclasses.asdict(feed.stats) for feed in feeds}
    Path(path).write_text(json.dumps({"at": time.monotonic(), "stats": stats}))
    say(f"{time.monotonic():.6f} wrote {path}")


if __name__ == "__main__":
    main()
