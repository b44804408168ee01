"""Worker app for the leader-queue tests: leader-only tasks on a Redis or RabbitMQ broker.

Configured from the environment: ``LEADERFEED_TEST_CONF`` (JSON settings: broker, election
name, timings...), ``LEADERFEED_TEST_KEY`` (Redis list the bodies record into) and
``LEADERFEED_TEST_RECORDS`` (that Redis, which is also the election's store; the broker may be
RabbitMQ). Each body records its argument, worker, process, term and its start and end with
``time.monotonic()`` - one clock for every process on the machine - so
:mod:`harness.leader_queue_checker` can count executions per argument and find overlaps.
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
from celery_leaderfeed.celery.decorators import current_term

CONF: dict[str, Any] = json.loads(os.environ.get("LEADERFEED_TEST_CONF", "{}"))
RUNS_KEY = os.environ.get("LEADERFEED_TEST_KEY", "leaderfeed-test:runs")
RECORDS_URL = os.environ.get("LEADERFEED_TEST_RECORDS", "redis://127.0.0.1:6379/0")
#: How long each body takes: long enough for two bodies on two workers to overlap if allowed.
BODY_SECONDS = float(os.environ.get("LEADERFEED_TEST_BODY_SECONDS", "0.003"))

app = Celery("leader_queue_app")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=4,
    worker_hijack_root_logger=True,
    task_ignore_result=True,
    **CONF,
)
celery_leaderfeed.install(app)

_client: redis.Redis | None = None
_client_pid: int | None = None
_client_lock = threading.Lock()


def _redis() -> redis.Redis:
    """One client per process, opened after the fork."""
    global _client, _client_pid
    with _client_lock:
        if _client is None or _client_pid != os.getpid():
            _client = redis.Redis.from_url(RECORDS_URL)
            _client_pid = os.getpid()
        return _client


def _body(task: Any, arg: int, sent_at: float | None) -> None:
    started = time.monotonic()
    time.sleep(BODY_SECONDS)
    ended = time.monotonic()
    run = {
        "arg": arg,
        "host": task.request.hostname,
        "pid": os.getpid(),
        "term": current_term(),
        "start": started,
        "end": ended,
        "sent": sent_at,
        "redelivered": bool((task.request.delivery_info or {}).get("redelivered")),
        "occurrence": (task.request.headers or {}).get("leaderfeed_occurrence")
        or getattr(task.request, "leaderfeed_occurrence", None),
    }
    _redis().rpush(RUNS_KEY, json.dumps(run))


@app.task(bind=True)
@leader_only
def settle(self: Any, arg: int, sent_at: float | None = None) -> None:
    """A leader-only task with a distinct argument per call (acknowledged early)."""
    _body(self, arg, sent_at)


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
@leader_only
def settle_late(self: Any, arg: int, sent_at: float | None = None) -> None:
    """The same, acknowledged after the body (redelivered if its worker dies)."""
    _body(self, arg, sent_at)


@app.task(bind=True)
def plain(self: Any, arg: int, sent_at: float | None = None) -> None:
    """An ordinary task with the same body, for the latency comparison."""
    started = time.monotonic()
    _redis().rpush(RUNS_KEY, json.dumps({"arg": arg, "start": started, "sent": sent_at}))
