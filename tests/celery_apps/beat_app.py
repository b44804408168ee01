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


@app.task(bind=True, name="beat_app.pulse")
def pulse(self: Any) -> None:
    """Record which occurrence this run is, who sent it, and when it ran."""
    headers = self.request.headers or {}

    def header(name: str) -> Any:
        return headers.get(name, getattr(self.request, name, None))

    run = {
        "occurrence": header("leaderfeed_occurrence"),
        "coalesced": header("leaderfeed_coalesced") or [],
        "term": header("leaderfeed_term"),
        "sender": header("leaderfeed_sender"),
        "sent_at": header("leaderfeed_sent_at"),
        "republished": header("leaderfeed_republished"),
        "task_id": self.request.id,
        "host": self.request.hostname,
        "at": time.time(),
    }
    _redis().rpush(RUNS_KEY, json.dumps(run))


@beat_init.connect
def _beat_started(sender: Any = None, **kwargs: Any) -> None:
    beat = {"pid": os.getpid(), "ppid": os.getppid(), "host": socket.gethostname()}
    _redis().rpush(f"{RUNS_KEY}:beats", json.dumps(beat))


@app.task(bind=True, name="beat_app.leader_pulse", acks_late=True, reject_on_worker_lost=True)
@leader_only
def leader_pulse(self: Any) -> None:
    """A periodic task that is also leader-only: routed to the leader queue, run there once."""
    headers = self.request.headers or {}

    def header(name: str) -> Any:
        return headers.get(name, getattr(self.request, name, None))

    run = {
        "occurrence": header("leaderfeed_occurrence"),
        "coalesced": header("leaderfeed_coalesced") or [],
        "term": current_term(),
        "sender": header("leaderfeed_sender"),
        "host": self.request.hostname,
        "at": time.time(),
    }
    _redis().rpush(f"{RUNS_KEY}:leader", json.dumps(run))
