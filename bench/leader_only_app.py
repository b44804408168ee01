"""The Celery app of the ``@leader_only`` part: ``celery -A bench.leader_only_app worker``.

The same empty task plain and ``@leader_only``; ``hold`` keeps the one pool process busy while
the bench fills the queue; ``measure_check`` times the check inside the pool process.
"""

from __future__ import annotations

import json
import os
import time
import timeit
from typing import Any

import redis
from celery import Celery

import celery_leaderfeed
from celery_leaderfeed import leader_only
from celery_leaderfeed.celery.worker_lease import current_lease

NAME = os.environ.get("BENCH_NAME", "bench-leader-only")
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench_leader_only", set_as_current=True)
app.conf.update(
    broker_url=URL,
    broker_connection_retry_on_startup=True,
    task_default_queue=NAME,
    task_ignore_result=True,
    leaderfeed_name=NAME,
)
celery_leaderfeed.install(app)


@app.task(name="bench.plain")  # type: ignore[untyped-decorator]  # celery is untyped
def plain(index: int) -> None:
    """The baseline: nothing but Celery's own work."""


@app.task(name="bench.guarded")  # type: ignore[untyped-decorator]
@leader_only
def guarded(index: int) -> None:
    """The same, behind the leadership check."""


@app.task(name="bench.hold")  # type: ignore[untyped-decorator]
def hold(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="bench.measure_check")  # type: ignore[untyped-decorator]
def measure_check(number: int) -> None:
    """Time the check in this pool process; push ``{name: seconds per call}`` to Redis."""
    view = current_lease(app)
    results: dict[str, Any] = {
        "pid": os.getpid(),
        "is_leader": bool(view is not None and view.is_leader()),
    }
    timings = {
        "current_lease(app)": lambda: current_lease(app),
        "current_lease(app).is_leader()": lambda: current_lease(app).is_leader(),  # type: ignore[union-attr]
        "plain.run(0)": lambda: plain.run(0),
        "guarded.run(0)": lambda: guarded.run(0),
    }
    for label, call in timings.items():
        best = min(timeit.repeat(call, number=number, repeat=5))
        results[label] = best / number
    client = redis.Redis.from_url(URL)
    client.rpush(f"{NAME}:check", json.dumps(results))
    client.close()
