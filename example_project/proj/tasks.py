"""The project's tasks: a periodic one, and one that must only ever run on the leader."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from celery_leaderfeed import leader_only
from celery_leaderfeed.celery.decorators import current_term

from .celery import NAME, app

RUNS_KEY = f"{NAME}:runs"

_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One Redis client per process, opened after the worker forked."""
    global _client  # noqa: PLW0603
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(app.conf.broker_url))
    return _client[1]


@app.task(bind=True, name="proj.pulse")
def pulse(self: Any) -> None:
    """Periodic: record which scheduled run this is and which node's beat sent it.

    The leader's beat stamps every send with the run's id (``leaderfeed_occurrence``), the
    leader's term and, after a failover gap, the ids of the runs this one stands for
    (``leaderfeed_coalesced``).
    """
    headers = self.request.headers or {}
    _redis().rpush(
        RUNS_KEY,
        json.dumps(
            {
                "occurrence": headers.get("leaderfeed_occurrence"),
                "coalesced": headers.get("leaderfeed_coalesced") or [],
                "term": headers.get("leaderfeed_term"),
                "sender": headers.get("leaderfeed_sender"),
                "ran_on": self.request.hostname,
                "at": time.time(),
            }
        ),
    )


@app.task(name="proj.settle_ledger")
@leader_only
def settle_ledger(batch: str) -> dict[str, Any]:
    """Leader-only: runs on the leader, is skipped on followers; the term fences the write."""
    entry = {"batch": batch, "fencing_token": current_term(), "at": time.time()}
    _redis().rpush(f"{NAME}:ledger", json.dumps(entry))
    return entry
