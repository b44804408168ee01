"""Periodic send cost before and after claim-publish-confirm (#16): ``python -m bench.send_cost``.

One leading ``LeaderScheduler`` in this process on a loopback redis-server the bench starts, an
interval entry due at every tick (its clock is moved one period per tick), and a ``send_task``
that records instead of publishing, so what is timed is the scheduler's own store work per
send. "before" is the same scheduler with the confirmation left out - the claim then the
publish, what a send cost until #16 - and "after" the shipped path: claim (pending), publish,
confirm. Also timed: one ``mark_once``, the store round trip a worker adds per periodic run.

``python -m bench --only send_cost`` measures it as a part of the page (:func:`run`, on the
bench's Redis); run alone, it starts its own redis-server and prints one line per figure.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
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


#: The variants timed, in the order each round runs them.
VARIANTS: dict[str, type[LeaderScheduler]] = {"before": _Before, "after": LeaderScheduler}
#: What each variant is, as the page and the printed lines name it.
LABELS = {"before": "before (claim, publish)", "after": "after (claim, publish, confirm)"}
#: Sends dropped at the start of every round (connections and caches warming up).
WARM_UP = 10


def run(redis_url: str, sends: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """The part of ``python -m bench``: both variants in ``rounds`` alternating rounds of
    ``sends // rounds`` sends each (the first :data:`WARM_UP` of a round dropped), then
    ``sends`` ``mark_once`` calls, all on ``redis_url``. Summaries per variant and per round
    (the raw samples, thousands per variant, are not kept)."""
    per_round = sends // rounds
    samples: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    round_medians: dict[str, list[float]] = {kind: [] for kind in VARIANTS}
    for _ in range(rounds):  # interleaved, so drift in the machine hits both alike
        for kind, scheduler in VARIANTS.items():
            timed = _per_send(scheduler, redis_url, per_round)[WARM_UP:]
            samples[kind] += timed
            round_medians[kind].append(summary(timed)["median"])
    variants = {
        kind: {
            "label": LABELS[kind],
            "summary": summary(values),
            "round_medians": round_medians[kind],
        }
        for kind, values in samples.items()
    }
    added = variants["after"]["summary"]["median"] - variants["before"]["summary"]["median"]
    return {
        "settings": {
            "store": "redis",
            "sends_per_variant": per_round * rounds,
            "rounds": rounds,
            "warm_up_dropped_per_round": WARM_UP,
        },
        "variants": variants,
        "confirm_added_median_s": added,
        "mark_once": summary(_mark_once(redis_url, sends)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.send_cost", description=__doc__)
    parser.add_argument("--sends", type=int, default=4000, help="sends per variant")
    parser.add_argument("--rounds", type=int, default=8, help="alternations of the variants")
    args = parser.parse_args(argv)
    with store("redis") as where:
        result = run(where.url, args.sends, args.rounds, Path("."))
    for kind, variant in result["variants"].items():
        s = variant["summary"]
        print(
            f"tick that sends one run, {LABELS[kind]}: median {us(s['median'])}, "
            f"p95 {us(s['p95'])} ({s['n']} sends, Redis on loopback)"
        )
    s = result["mark_once"]
    print(f"mark_once in the worker: median {us(s['median'])}, p95 {us(s['p95'])} ({s['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
