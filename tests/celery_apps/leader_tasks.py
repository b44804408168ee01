"""Worker app for the real-worker tests of the leaderfeed step and ``@leader_only``.

Configured from the environment so each test runs its own election on the session Redis:
``LEADERFEED_TEST_CONF`` holds a JSON object of settings (broker, backend, election name,
timings...). Tasks record what they did in Redis under ``LEADERFEED_TEST_KEY`` with
``time.monotonic()`` stamps - one clock for every process on the machine - so a test can
check that no two leader-only bodies overlapped. With ``LEADERFEED_TEST_ACTS`` (a directory),
the worker's main process also records an *act* every millisecond its lease lets it act as
leader (the lease every ``@leader_only`` body is admitted by), as ``harness.fault_checker``
reads them: ``<monotonic> <member> <term>`` lines in ``<dir>/<node name>.acts``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import psutil
import redis
from celery import Celery
from celery.signals import worker_ready

import celery_leaderfeed
from celery_leaderfeed import leader_only
from celery_leaderfeed.celery.decorators import current_term
from celery_leaderfeed.celery.worker_lease import current_lease

CONF: dict[str, Any] = json.loads(os.environ.get("LEADERFEED_TEST_CONF", "{}"))
RUNS_KEY = os.environ.get("LEADERFEED_TEST_KEY", "leaderfeed-test:runs")

app = Celery("leader_tasks")
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=True,
    result_expires=600,
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
            _client = redis.Redis.from_url(app.conf.broker_url)
            _client_pid = os.getpid()
        return _client


def _record(**fields: Any) -> None:
    _redis().rpush(RUNS_KEY, json.dumps(fields))


@worker_ready.connect
def _record_acts(sender: Any = None, **kwargs: Any) -> None:
    directory = os.environ.get("LEADERFEED_TEST_ACTS")
    if not directory or sender is None:
        return
    hostname = sender.hostname

    def act() -> None:
        with open(os.path.join(directory, f"{hostname}.acts"), "a", buffering=1) as out:
            while True:
                lease = current_lease(app)
                now = time.monotonic()
                if lease is not None and lease.term is not None and lease.valid(now):
                    out.write(f"{now:.6f} {hostname} {lease.term}\n")
                time.sleep(0.001)

    threading.Thread(target=act, name="acts", daemon=True).start()


@app.task(bind=True)
@leader_only
def leader_work(self: Any, label: str, duration: float = 0.0, tick: float = 0.02) -> dict[str, Any]:
    """A leader-only body that records when it started, ran (every ``tick``) and ended."""
    run = {
        "label": label,
        "host": self.request.hostname,
        "pid": os.getpid(),
        "term": current_term(),
    }
    started = time.monotonic()
    _record(event="start", at=started, **run)
    while time.monotonic() - started < duration:
        time.sleep(tick)
        _record(event="tick", at=time.monotonic(), **run)
    _record(event="end", at=time.monotonic(), **run)
    return run


@app.task
@leader_only(policy="raise")
def leader_or_raise() -> int:
    return current_term()


@app.task(max_retries=1)
@leader_only(policy="retry")
def leader_or_retry() -> int:
    return current_term()


@app.task(bind=True)
def probe(self: Any) -> dict[str, Any]:
    """What this process sees of its worker's lease (an ordinary task)."""
    view = current_lease(app)
    return {
        "host": self.request.hostname,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "at": time.monotonic(),
        "born": psutil.Process().create_time(),  # wall clock, as psutil reports it
        "leader": bool(view and view.is_leader()),
        "term": view.term if view else None,
        "seen": view is not None,
    }


@app.task(bind=True)
def plain_work(self: Any, label: str, duration: float) -> None:
    """An ordinary task that takes ``duration`` seconds and records when it started and ended."""
    run = {"label": label, "host": self.request.hostname, "pid": os.getpid()}
    _record(event="start", at=time.monotonic(), **run)
    time.sleep(duration)  # the work itself: a worker shutting down must let it finish
    _record(event="end", at=time.monotonic(), **run)


@app.task
def plain(label: str) -> str:
    """An ordinary task: runs on every worker, leader or not."""
    return label
