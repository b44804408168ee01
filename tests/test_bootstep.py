"""The worker step in Celery's in-process test worker, on the memory backend.

The test worker stops through ``WorkController.terminate`` (the cold path); the warm path and
prefork pools are covered with real workers in ``test_worker_leadership.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_leaderfeed import leader_only
from celery_leaderfeed.backends.memory import MemoryStore, memory_store
from celery_leaderfeed.celery.bootstep import LeaderFeedStep
from celery_leaderfeed.celery.settings import StartupConfigurationError
from celery_leaderfeed.celery.shared_lease import segment_name
from celery_leaderfeed.celery.signals import leadership_gained, leadership_lost
from celery_leaderfeed.celery.worker_lease import (
    ELECTION_ENV,
    current_lease,
    leadership_report,
    worker_feed,
    worker_settings,
)
from celery_leaderfeed.errors import ConfigurationError
from harness.helpers import wait_until
from tests.celery_apps.memory_app import make_app, store_url


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


def run_worker(app: Celery, **kwargs: Any) -> AbstractContextManager[Any]:
    kwargs.setdefault("pool", "solo")
    return start_worker(app, perform_ping_check=False, shutdown_timeout=20, **kwargs)


@pytest.fixture
def signals_seen() -> Iterator[list[tuple[str, str, int, str | None]]]:
    seen: list[tuple[str, str, int, str | None]] = []

    def gained(sender: str, term: int, leader_id: str | None, **kwargs: Any) -> None:
        seen.append(("gained", sender, term, leader_id))

    def lost(sender: str, term: int, leader_id: str | None, **kwargs: Any) -> None:
        seen.append(("lost", sender, term, leader_id))

    leadership_gained.connect(gained, weak=False)
    leadership_lost.connect(lost, weak=False)
    try:
        yield seen
    finally:
        leadership_gained.disconnect(gained)
        leadership_lost.disconnect(lost)


def child_view() -> tuple[str, int | None, str | None, bool] | None:
    """Run in a child process: the lease of the parent worker, seen through an unrelated app."""
    view = current_lease(Celery("child", set_as_current=False))
    return None if view is None else (view.role.value, view.term, view.member_id, view.is_leader())


def test_the_step_leads_shares_its_lease_and_resigns_when_the_worker_stops(
    app: Celery, signals_seen: list[tuple[str, str, int, str | None]]
) -> None:
    with run_worker(app) as worker:
        feed = worker_feed(app)
        assert feed is not None
        assert feed.id == worker.hostname
        assert feed.wait_for_leadership(5)
        term = feed.term
        assert term is not None

        view = current_lease(app)
        assert view is not None and view.is_leader()
        assert (view.term, view.member_id, view.leader_id) == (
            term,
            worker.hostname,
            worker.hostname,
        )
        stats = worker.stats()["leaderfeed"]
        assert (stats["role"], stats["leader"], stats["term"]) == ("leader", worker.hostname, term)
        report = leadership_report(app)
        assert report is not None
        assert report["lease_remaining"] > 0 and 0 <= report["lease_age"] < 1
        assert report["backend"] == store_url(app)

        segment = Path("/dev/shm") / segment_name(feed.name, os.getpid())
        assert segment.exists()
        assert os.environ[ELECTION_ENV] == feed.name
        for method in ("fork", "spawn"):
            with multiprocessing.get_context(method).Pool(1) as pool:
                assert pool.apply(child_view) == ("leader", term, worker.hostname, True), method

    assert worker_feed(app) is None
    assert current_lease(app) is None
    assert not segment.exists()
    assert ELECTION_ENV not in os.environ
    record = memory_store(store_url(app)).observe(feed.name).record
    assert record is not None and record.vacant and record.term == term  # resigned
    wait_until(lambda: len(signals_seen) == 2, 2, message="both signals")
    assert signals_seen == [
        ("gained", worker.hostname, term, worker.hostname),
        ("lost", worker.hostname, term, None),
    ]


def test_worker_options_override_the_configuration(app: Celery) -> None:
    with run_worker(app, leaderfeed_name="from-cli", leaderfeed_heartbeat_interval=0.04) as worker:
        feed = worker_feed(app)
        assert feed is not None
        assert (feed.name, feed.timing.heartbeat_interval) == ("from-cli", 0.04)
        # Written into app.conf, so every process of the worker resolves the same election.
        assert app.conf.leaderfeed_name == "from-cli"
        settings = worker_settings(app)
        assert settings is not None and settings.name == "from-cli"
        assert worker.stats()["leaderfeed"]["name"] == "from-cli"


BAD_SETTINGS = [
    pytest.param({"leaderfeed_heartbeat_interval": -1}, "leaderfeed_heartbeat_interval", id="neg"),
    pytest.param(
        {"leaderfeed_follower_policy": "maybe"}, "leaderfeed_follower_policy", id="policy"
    ),
    pytest.param({"leaderfeed_backend": "nosuch://:PW-1@x"}, "nosuch://", id="scheme"),
    pytest.param({"leaderfeed_backend_options": {"bogus": 1}}, "bogus", id="option"),
    pytest.param({"leaderfeed_name": "no spaces"}, "election name", id="name"),
    pytest.param(
        {"leaderfeed_heartbeat_interval": 1.0}, "at least twice heartbeat_interval", id="timing"
    ),
]


@pytest.mark.parametrize(("conf", "named"), BAD_SETTINGS)
def test_bad_settings_fail_the_worker_when_it_is_built(
    app: Celery, conf: dict[str, Any], named: str
) -> None:
    app.conf.update(conf)
    with pytest.raises(StartupConfigurationError) as caught:
        app.WorkController(app=app, pool="solo", hostname="bad@localhost")
    error = caught.value
    assert isinstance(error, ConfigurationError)
    assert isinstance(error, click.ClickException)  # `celery worker`: one "Error: ..." line
    message = str(error)
    assert message.startswith("leaderfeed: ") and named in message
    assert "\n" not in message and "PW-1" not in message
    assert ELECTION_ENV not in os.environ  # nothing was built


def test_a_store_outage_at_start_does_not_delay_the_worker(app: Celery) -> None:
    store = memory_store(store_url(app))
    store.set_available(False)
    try:
        started = time.monotonic()
        with run_worker(app):
            assert time.monotonic() - started < 3
            feed = worker_feed(app)
            assert feed is not None and not feed.is_leader
            store.set_available(True)
            assert feed.wait_for_leadership(10)
    finally:
        store.set_available(True)


def test_cold_shutdown_resigns_only_after_running_thread_tasks_finished(redis_url: str) -> None:
    store = MemoryStore(clock=time.monotonic)  # the record's timestamps on our clock
    app = make_app(redis_url, leaderfeed_backend_options={"store": store})
    started = threading.Event()
    ended: list[float] = []

    @app.task(shared=False)
    @leader_only
    def slow() -> None:
        started.set()
        time.sleep(0.5)
        ended.append(time.monotonic())

    with run_worker(app, pool="threads", concurrency=2):
        feed = worker_feed(app)
        assert feed is not None and feed.wait_for_leadership(5)
        slow.delay()
        assert started.wait(5)
    # Leaving the block terminated the worker while `slow` ran: it must have resigned after.
    record = store.observe(app.conf.leaderfeed_name).record
    assert record is not None and record.vacant and record.renewed_at is not None
    assert ended and record.renewed_at > ended[0]


def test_without_the_step_nothing_is_visible(redis_url: str) -> None:
    app = make_app(redis_url, install=False)
    assert LeaderFeedStep not in app.steps["worker"]
    with run_worker(app):
        assert worker_feed(app) is None
        assert current_lease(app) is None
        assert leadership_report(app) is None
