"""Periodic send cost before and after claim-publish-confirm (#16): ``python -m bench.send_cost``.

One leading ``LeaderScheduler`` in this process on a loopback redis-server the bench starts, an
interval entry due at every tick (its clock is moved one period per tick), and a ``send_task``
that records instead of publishing, so what is timed is the scheduler's own store work per
send. "before" is the same scheduler with the confirmation left out - the claim then the
publish, what a send cost until #16 - and "after" the shipped path: claim (pending), publish,
confirm. Also timed: one ``mark_once``, the store round trip a worker adds per periodic run.
Prints one line per figure; not part of ``python -m bench``'s page.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery

from bench.servers import store
from bench.stats import summary, us
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.celery.beat_leadership import fence
from celery_leaderfeed.celery.ledger import Claim
from celery_leaderfeed.celery.scheduler import LeaderScheduler
from celery_leaderfeed.engine.election import Lease, Role


class _Leading:
    """Leadership taken once on the store's record, held for the whole run."""

    def __init__(self, url: str, election: str) -> None:
        self.backend = backend_from_url(url, name=election, timeout=2.0)
        self.backend.connect()
        self.election = election
        self.token = uuid.uuid4().hex
        observed = self.backend.read()
        claimed = self.backend.claim(
            observed.version, "bench", self.token, min_term=0, min_version=0
        )
        assert claimed.ok and claimed.observation.record is not None
        self.term = claimed.observation.record.term

    def start(self) -> None: ...

    def lease(self) -> Lease:
        return Lease(Role.LEADER, self.term, self.token, deadline=math.inf, member_id="bench")

    def close(self) -> None:
        self.backend.close()


class _Before(LeaderScheduler):
    """Claim (no pending record) then publish, no confirmation: the send path until #16."""

    def _claim_and_send(self, ledger: Any, entry: Any, run: Any, new: Any, lease: Any) -> Any:
        plain = new.confirmed()
        if ledger.claim(*fence(lease), entry.name, plain) is Claim.REFUSED:
            return Claim.REFUSED
        if new.pending is not None:
            assert self._publish(entry, run, new, lease, new.pending, None) is None
        self._report(entry, run, plain, lease)
        return plain


def _per_send(kind: type[LeaderScheduler], url: str, sends: int) -> list[float]:
    election = f"bench-{uuid.uuid4().hex[:8]}"
    app = Celery("bench-send-cost", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        leaderfeed_backend=url,
        leaderfeed_name=election,
        beat_schedule={"tick": {"task": "bench.tick", "schedule": 1.0}},
    )
    app.send_task = lambda *args, **options: None  # type: ignore[method-assign]
    now = [datetime(2024, 5, 1, tzinfo=timezone.utc)]
    leading = _Leading(url, election)
    scheduler = kind(app, leadership=leading, clock=lambda: now[0])
    try:
        scheduler.tick()  # anchors the entry
        timings = []
        for _ in range(sends):
            now[0] += timedelta(seconds=1)
            started = time.perf_counter()
            scheduler.tick()
            timings.append(time.perf_counter() - started)
        return timings
    finally:
        scheduler.close()
        leading.close()


def _mark_once(url: str, marks: int) -> list[float]:
    backend = backend_from_url(url, name=f"bench-{uuid.uuid4().hex[:8]}", timeout=2.0)
    backend.connect()
    try:
        timings = []
        for index in range(marks):
            started = time.perf_counter()
            backend.mark_once(f"once:tick@{index}", "publish", 60.0)
            timings.append(time.perf_counter() - started)
        return timings
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.send_cost", description=__doc__)
    parser.add_argument("--sends", type=int, default=4000, help="sends per variant")
    parser.add_argument("--rounds", type=int, default=8, help="alternations of the variants")
    args = parser.parse_args(argv)
    variants = {
        "before (claim, publish)": _Before,
        "after (claim, publish, confirm)": LeaderScheduler,
    }
    with store("redis") as where:
        samples: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.rounds):  # interleaved, so drift in the machine hits both alike
            for label, kind in variants.items():
                samples[label] += _per_send(kind, where.url, args.sends // args.rounds)[10:]
        for label, values in samples.items():
            s = summary(values)
            print(
                f"tick that sends one run, {label}: median {us(s['median'])}, "
                f"p95 {us(s['p95'])} ({s['n']} sends, Redis on loopback)"
            )
        s = summary(_mark_once(where.url, args.sends))
        print(f"mark_once in the worker: median {us(s['median'])}, p95 {us(s['p95'])} ({s['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
