"""The Celery app of the periodic-runs part, for every system compared:
``celery -A bench.periodic_app ...``, configured from the environment the bench sets
(``BENCH_SYSTEM``, ``BENCH_PROFILE``, ``BENCH_NAME``, ``BENCH_NODE``, ``BENCH_REDIS_URL``,
``BENCH_PERIOD``). For celery-leaderfeed, ``BENCH_STORE_URL`` and ``BENCH_STORE_OPTIONS`` (JSON)
put the election and the schedule state in another store (``leaderfeed_backend`` and
``leaderfeed_backend_options``); unset, they are in the broker's Redis.

The periodic task goes to ``<BENCH_NAME>.runs``, which nothing consumes, so the broker's list
records every send; ``before_task_publish`` stamps each with the node, PID and clocks.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

#: Settings per system and profile, exactly as applied (single-beat's: its wrapper's env).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "leaderfeed": {
        "default": {},
        "fast": {
            "leaderfeed_heartbeat_interval": 0.25,
            "leaderfeed_election_timeout_min": 0.75,
            "leaderfeed_election_timeout_max": 1.0,
        },
    },
    "redbeat": {
        "default": {},
        "fast": {"redbeat_lock_timeout": 2, "beat_max_loop_interval": 0.5},
    },
    "single-beat": {"default": {}, "fast": {}},
}
SINGLE_BEAT_ENV: dict[str, dict[str, str]] = {
    "default": {},
    "fast": {
        "SINGLE_BEAT_LOCK_TIME": "3",
        "SINGLE_BEAT_INITIAL_LOCK_TIME": "4",
        "SINGLE_BEAT_HEARTBEAT_INTERVAL": "1",
    },
}

SYSTEM = os.environ.get("BENCH_SYSTEM", "leaderfeed")
PROFILE = os.environ.get("BENCH_PROFILE", "default")
NAME = os.environ.get("BENCH_NAME", "bench")
NODE = os.environ.get("BENCH_NODE", socket.gethostname())
URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PERIOD = float(os.environ.get("BENCH_PERIOD", "1.0"))
STORE_URL = os.environ.get("BENCH_STORE_URL")
STORE_OPTIONS: dict[str, Any] = json.loads(os.environ.get("BENCH_STORE_OPTIONS") or "{}")
RUNS_QUEUE = f"{NAME}.runs"

app = Celery("bench_periodic", set_as_current=True)
app.conf.update(
    broker_url=URL,
    broker_connection_retry_on_startup=True,
    task_default_queue=f"{NAME}.work",
    task_ignore_result=True,
    worker_hijack_root_logger=True,
    beat_schedule={
        "tick": {"task": "bench.tick", "schedule": PERIOD, "options": {"queue": RUNS_QUEUE}}
    },
)
app.conf.update(PROFILES[SYSTEM][PROFILE])

if SYSTEM == "leaderfeed":
    import celery_leaderfeed

    app.conf.update(leaderfeed_name=NAME, beat_scheduler="celery_leaderfeed.beat:LeaderScheduler")
    if STORE_URL:
        app.conf.update(leaderfeed_backend=STORE_URL, leaderfeed_backend_options=STORE_OPTIONS)
    celery_leaderfeed.install(app)
elif SYSTEM == "redbeat":
    app.conf.update(
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=URL,
        redbeat_key_prefix=f"{NAME}:redbeat:",
    )


@app.task(name="bench.tick")  # type: ignore[untyped-decorator]  # celery is untyped
def tick() -> None:
    """The periodic task; never run here (its queue has no consumer)."""


@before_task_publish.connect  # type: ignore[untyped-decorator]
def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers["bench_node"] = NODE
        headers["bench_pid"] = os.getpid()
        headers["bench_sent_mono"] = time.monotonic()
        headers["bench_sent_at"] = time.time()
