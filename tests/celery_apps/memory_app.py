"""In-process Celery apps on the memory backend, for the unit tests of the Celery layer.

Every app gets its own election (a ``memory://`` store of its own), its own queue and timings
short enough for quick tests. The broker is the session Redis: an in-process worker on it stops
in about 1 s (4 s on kombu's memory transport, which polls with a 2 s timeout).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

from celery import Celery

import celery_leaderfeed
from celery_leaderfeed import LeaderFeed

HEARTBEAT = 0.05
TIMING = {
    "leaderfeed_heartbeat_interval": HEARTBEAT,
    "leaderfeed_election_timeout_min": 0.15,
    "leaderfeed_election_timeout_max": 0.25,
}


def make_app(broker: str, *, install: bool = True, **conf: Any) -> Celery:
    """A fresh app whose ``leaderfeed_name`` is unique; ``conf`` overrides any setting."""
    name = f"u-{uuid.uuid4().hex[:12]}"
    app = Celery(name, broker=broker, backend="cache+memory://", set_as_current=False)
    app.conf.update(
        leaderfeed_backend=f"memory://{name}",
        leaderfeed_name=name,
        task_default_queue=name,
        worker_hijack_root_logger=False,  # keep pytest's log capture
        **TIMING,
    )
    app.conf.update(conf)
    if install:
        celery_leaderfeed.install(app)
    return app


def store_url(app: Celery) -> str:
    return str(app.conf.leaderfeed_backend)


@contextlib.contextmanager
def member(app: Celery, member_id: str) -> Iterator[LeaderFeed]:
    """Another member of the app's election, running in this process."""
    feed = LeaderFeed(
        store_url(app),
        name=app.conf.leaderfeed_name,
        member_id=member_id,
        heartbeat_interval=TIMING["leaderfeed_heartbeat_interval"],
        election_timeout_min=TIMING["leaderfeed_election_timeout_min"],
        election_timeout_max=TIMING["leaderfeed_election_timeout_max"],
    )
    feed.start()
    try:
        yield feed
    finally:
        feed.stop()
