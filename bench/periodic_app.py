"""The Celery app of the periodic-runs benchmark: ``celery -A bench.periodic_app ...``.

One app for every system compared, configured from the environment by the bench:

* ``BENCH_SYSTEM``: ``leaderfeed`` (``install(app)`` and the ``LeaderScheduler``; nodes run
  ``celery worker -B``), ``redbeat`` (``redbeat.RedBeatScheduler``; nodes run ``celery beat``)
  or ``single-beat`` (Celery's default scheduler; nodes run ``single-beat celery beat``);
* ``BENCH_PROFILE``: ``default`` or ``fast`` - the settings in :data:`PROFILES`, nothing else;
* ``BENCH_NAME`` (keys, election and queues of one cluster), ``BENCH_REDIS_URL``,
  ``BENCH_NODE`` (the node's name, inherited by its beat child process).

The periodic task runs every ``BENCH_PERIOD`` seconds (1 s) and is routed to the queue
``<BENCH_NAME>.runs``, which nothing consumes: the broker's list *is* the record of every
send. Each message is stamped at publish time (``before_task_publish``) with the sending node,
PID and CLOCK_MONOTONIC - instrumentation of this app, the same for every system.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

#: Settings of each system per profile, exactly as applied (and as the page lists them).
#: single-beat is configured by environment variables of the wrapper (see SINGLE_BEAT_ENV).
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
