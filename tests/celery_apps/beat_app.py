"""Worker and beat app for the real-process tests of ``LeaderScheduler``.

Configured from the environment so each test has its own election and Redis keys:
``LEADERFEED_TEST_CONF`` holds a JSON object of settings, ``LEADERFEED_TEST_KEY`` the Redis list
the periodic task records its runs in, ``LEADERFEED_TEST_PERIOD`` the period in seconds. Beat
processes (embedded or standalone) record their start under ``<key>:beats`` so a test can find
the embedded beat child of a worker.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import beat_init

import celery_leaderfeed
from celery_leaderfeed import leader_only
from celery_leaderfeed.celery.decorators import current_term

CONF: dict[str, Any] = json.loads(os.environ.get("LEADERFEED_TEST_CONF", "{}"))
RUNS_KEY = os.environ.get("LEADERFEED_TEST_KEY", "leaderfeed-test:beat")
PERIOD = float(os.environ.get("LEADERFEED_TEST_PERIOD", "0.5"))

app = Celery("beat_app")
app.conf.update(
    {
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": True,
        "task_ignore_result": True,
        "beat_scheduler": "celery_leaderfeed.beat:LeaderScheduler",
        "beat_schedule": {"pulse": {"task": "beat_app.pulse", "schedule": PERIOD}},
        **CONF,
    }
)
celery_leaderfeed.install(app)

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client per process, opened after the fork."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(app.conf.broker_url))
    return _client[1]


def _header(request: Any, name: str) -> Any:
    """A message header, as Celery shows it on the request (headers, or request attributes)."""
    return (request.headers or {}).get(name, getattr(request, name, None))


def _observed(request: Any, **extra: Any) -> dict[str, Any]:
    """What a recording task writes of its run: which occurrence, sent by whom, run where and
    when, plus ``extra``."""
    return {
        "occurrence": _header(request, "leaderfeed_occurrence"),
        "coalesced": _header(request, "leaderfeed_coalesced") or [],
        "sender": _header(request, "leaderfeed_sender"),
        "host": request.hostname,
        "at": time.time(),
        **extra,
    }


@app.task(bind=True, name="beat_app.pulse")
def pulse(self: Any) -> None:
    """Record which occurrence this run is, who sent it, and when it ran."""
    request = self.request
    run = _observed(
        request,
        term=_header(request, "leaderfeed_term"),
        sent_at=_header(request, "leaderfeed_sent_at"),
        republished=_header(request, "leaderfeed_republished"),
        task_id=request.id,
    )
    _redis().rpush(RUNS_KEY, json.dumps(run))


@beat_init.connect
def _beat_started(sender: Any = None, **kwargs: Any) -> None:
    beat = {"pid": os.getpid(), "ppid": os.getppid(), "host": socket.gethostname()}
    _redis().rpush(f"{RUNS_KEY}:beats", json.dumps(beat))


@app.task(bind=True, name="beat_app.leader_pulse", acks_late=True, reject_on_worker_lost=True)
@leader_only
def leader_pulse(self: Any) -> None:
    """A periodic task that is also leader-only: routed to the leader queue, run there once."""
    run = _observed(self.request, term=current_term())
    _redis().rpush(f"{RUNS_KEY}:leader", json.dumps(run))
