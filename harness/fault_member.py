"""One election member as its own OS process, for the fault tests.

It runs a LeaderFeed and, every few milliseconds, appends an *act* to a shared file whenever
its lease is valid: ``<CLOCK_MONOTONIC seconds> <member id> <term>``. All members run on one
machine, so their monotonic clocks are one clock and the checker can compare the acts of
different processes directly. SIGTERM stops the feed gracefully (it resigns).

``--unsafe`` trusts each lease for ten seconds longer than it lasts - a leader that keeps
acting after followers may have taken over, as the original leaderfeed did after a pause -
so the tests can show that the checker catches exactly that.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time

from celery_leaderfeed import LeaderFeed, Role

SAMPLE_SECONDS = 0.003
UNSAFE_EXTRA = 10.0


class _MonotonicFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{time.monotonic():.6f} {record.levelname} {record.getMessage()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--name", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--acts", required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--min", type=float, default=0.6)
    parser.add_argument("--max", type=float, default=0.9)
    parser.add_argument("--unsafe", action="store_true")
    args = parser.parse_args()

    # The engine's INFO lines (claims, role changes), stamped with the acts' clock.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_MonotonicFormatter())
    logging.getLogger("celery_leaderfeed").addHandler(handler)
    logging.getLogger("celery_leaderfeed").setLevel(logging.INFO)
    feed = LeaderFeed(
        args.url,
        name=args.name,
        member_id=args.id,
        heartbeat_interval=args.heartbeat,
        election_timeout_min=args.min,
        election_timeout_max=args.max,
        options=json.loads(args.options),
    )
    # A plain flag: Event.set() inside a signal handler can deadlock on the Event's lock when
    # the handler interrupts the main thread's own Event.wait() (CPython issue 126434).
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    feed.on("new_state", lambda role: print(f"{time.monotonic():.6f} new_state {role}", flush=True))
    feed.start(retry=True)
    print(f"{time.monotonic():.6f} started", flush=True)
    acts = os.open(args.acts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    trusted = feed.lease
    while not stopping:
        lease = feed.lease
        now = time.monotonic()
        if args.unsafe:
            trusted = lease if lease.role is Role.LEADER else trusted
            acting = trusted.role is Role.LEADER and now < trusted.deadline + UNSAFE_EXTRA
            lease = trusted
        else:
            acting = lease.valid(now)
        if acting:
            # One write(2) per act on an O_APPEND file: lines from processes never interleave.
            os.write(acts, f"{now:.6f} {args.id} {lease.term}\n".encode())
        time.sleep(SAMPLE_SECONDS)
    stop_called_at = time.monotonic()
    feed.stop()
    print(f"{stop_called_at:.6f} stopping", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
