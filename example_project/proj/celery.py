"""The Celery app: leaderfeed installed, and beat swapped for the leader-gated scheduler.

Run every node with ``celery -A example_project.proj worker -B``: all of them elect one leader
over Redis; only the leader's beat sends the periodic task, and only the leader runs
``@leader_only`` tasks. Settings come from the environment so the demo can point the nodes at
its own Redis: ``REDIS_URL`` (broker and election store) and ``PROJ_NAME`` (election name and
queue, so several demos can share one Redis).
"""

from __future__ import annotations

import os

from celery import Celery

import celery_leaderfeed

NAME = os.environ.get("PROJ_NAME", "proj")
PERIOD = float(os.environ.get("PROJ_PERIOD", "1.0"))

app = Celery("proj", include=["example_project.proj.tasks"])
app.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
    broker_connection_retry_on_startup=True,
    task_default_queue=NAME,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    # The election (the store defaults to the broker when it is Redis).
    leaderfeed_name=NAME,
    # Fast failover for the demo; the defaults (1 s heartbeat, 3-4 s election timeout) are
    # gentler on a store across a network.
    leaderfeed_heartbeat_interval=0.2,
    leaderfeed_election_timeout_min=0.6,
    leaderfeed_election_timeout_max=0.9,
    leaderfeed_misfire_policy="run_once",
    # Beat sends only from the leader, one send per scheduled run across failovers.
    beat_scheduler="celery_leaderfeed.beat:LeaderScheduler",
    beat_schedule={"pulse": {"task": "proj.pulse", "schedule": PERIOD}},
)
celery_leaderfeed.install(app)
