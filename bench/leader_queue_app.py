"""The Celery app of the leader-queue part: ``celery -A bench.leader_queue_app worker``.

Two tasks with the same body, plain and ``@leader_only`` (``install`` routes the second to the
leader queue); each body pushes ``{kind, host, start, sent}`` to a Redis list, ``start`` and
``sent`` on CLOCK_MONOTONIC, one clock for every process of the machine.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import redis
from celery import Celery

import celery_leaderfeed
from celery_leaderfeed import leader_only

NAME = os.environ.get("BENCH_NAME", "bench-leader-queue")
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RUNS = f"{NAME}:runs"

app = Celery("bench_leader_queue", set_as_current=True)
app.conf.update(
    broker_url=URL,
    broker_connection_retry_on_startup=True,
    task_default_queue=NAME,
    task_ignore_result=True,
    leaderfeed_name=NAME,
)
celery_leaderfeed.install(app)

_local = threading.local()


def _record(task: Any, kind: str, sent: float) -> None:
    start = time.monotonic()
    if getattr(_local, "pid", None) != os.getpid():  # one client per process, after the fork
        _local.client, _local.pid = redis.Redis.from_url(URL), os.getpid()
    run = {"kind": kind, "host": task.request.hostname, "start": start, "sent": sent}
    _local.client.rpush(RUNS, json.dumps(run))


@app.task(name="bench.lq_plain", bind=True)  # type: ignore[untyped-decorator]  # celery is untyped
def plain(self: Any, sent: float) -> None:
    """The baseline: any worker takes it from the default queue."""
    _record(self, "plain", sent)


@app.task(name="bench.lq_leader", bind=True)  # type: ignore[untyped-decorator]
@leader_only
def leader(self: Any, sent: float) -> None:
    """The same body, through the leader queue, on the leader only."""
    _record(self, "leader_only", sent)
