"""``@leader_only`` in Celery's in-process test worker, on the memory backend.

A *rival* member of the same election (a plain ``LeaderFeed`` in this process) takes or hands
over leadership, so each test controls whether the worker leads.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult
from celery.signals import task_retry

from celery_leaderfeed import LeaderFeed, leader_only
from celery_leaderfeed.celery import decorators
from celery_leaderfeed.celery.decorators import SKIPPED, current_term
from celery_leaderfeed.celery.worker_lease import worker_feed
from celery_leaderfeed.errors import ConfigurationError, NotLeaderError
from harness.helpers import wait_until
from tests.celery_apps.memory_app import make_app, member


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


@pytest.fixture
def rival(app: Celery) -> Iterator[LeaderFeed]:
    """A member started before any worker: it leads, the worker follows.

    The app routes every task to the worker's own queue (a user route wins over the leader
    queue), so leader-only tasks reach this follower and its policy is what the test sees.
    """
    app.conf.task_routes = {"*": {"queue": app.conf.task_default_queue}}
    with member(app, "rival") as feed:
        assert feed.wait_for_leadership(5)
        yield feed


def run_worker(app: Celery, **kwargs: Any) -> AbstractContextManager[Any]:
    kwargs.setdefault("pool", "solo")
    return start_worker(app, perform_ping_check=False, shutdown_timeout=20, **kwargs)


def leading(app: Celery) -> int:
    feed = worker_feed(app)
    assert feed is not None and feed.wait_for_leadership(5)
    assert feed.term is not None
    return feed.term


def settled(result: AsyncResult, timeout: float = 10) -> str:
    done = ("SUCCESS", "FAILURE", SKIPPED)
    return wait_until(lambda: result.state in done and result.state, timeout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_the_body_runs_on_the_leader_with_its_term(app: Celery, pool: str) -> None:
    @app.task(shared=False)
    @leader_only
    def add(x: int, y: int) -> tuple[int, int]:
        return x + y, current_term()

    with run_worker(app, pool=pool, concurrency=2):
        term = leading(app)
        results = [add.delay(i, 1) for i in range(4)]
        assert [tuple(r.get(timeout=10)) for r in results] == [(i + 1, term) for i in range(4)]
    with pytest.raises(NotLeaderError):
        current_term()  # only inside a leader-only body


def test_a_follower_skips_with_state_skipped(
    app: Celery, rival: LeaderFeed, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    @app.task(shared=False)
    @leader_only
    def work(x: int) -> None:
        ran.append(x)

    @app.task(shared=False, ignore_result=True)
    @leader_only
    def quiet() -> None:
        ran.append(-1)

    app.conf.leaderfeed_follower_policy = "skip"
    caplog.set_level(logging.INFO, logger="celery_leaderfeed")
    with run_worker(app) as worker:
        result = work.delay(1)
        assert settled(result) == SKIPPED
        assert result.info == {"reason": "not_leader", "worker": worker.hostname, "leader": "rival"}
        assert not result.ready()  # SKIPPED is not one of Celery's ready states
        unstored = quiet.delay()
        wait_until(lambda: "quiet" in caplog.text, 10)
    assert ran == []
    assert unstored.state == "PENDING"  # ignore_result: nothing is written for it
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 2
    assert f"{worker.hostname} is not the leader (leader: rival)" in skips[0]


def test_retry_policy_retries_then_fails_with_not_leader(app: Celery, rival: LeaderFeed) -> None:
    app.conf.leaderfeed_retry_delay = 0.05
    retries: list[object] = []

    @app.task(shared=False, max_retries=2)
    @leader_only(policy="retry")
    def again() -> None:
        raise AssertionError("must not run on a follower")

    def on_retry(sender: Any = None, **kwargs: Any) -> None:
        retries.append(kwargs["reason"])

    task_retry.connect(on_retry, weak=False)
    try:
        with run_worker(app):
            result = again.delay()
            assert settled(result) == "FAILURE"
    finally:
        task_retry.disconnect(on_retry)
    assert isinstance(result.result, NotLeaderError)
    assert len(retries) == 2
    assert all(isinstance(getattr(r, "exc", None), NotLeaderError) for r in retries)


def test_raise_policy_from_the_setting(app: Celery, rival: LeaderFeed) -> None:
    app.conf.leaderfeed_follower_policy = "raise"

    @app.task(shared=False)
    @leader_only
    def strict() -> None:
        raise AssertionError("must not run on a follower")

    @app.task(shared=False)
    @leader_only(policy="skip")  # the task's own policy wins over the setting
    def lenient() -> None:
        raise AssertionError("must not run on a follower")

    with run_worker(app):
        failed = strict.delay()
        assert settled(failed) == "FAILURE"
        assert isinstance(failed.result, NotLeaderError)
        assert "not the leader (leader: rival)" in str(failed.result)
        assert settled(lenient.delay()) == SKIPPED


def test_leadership_is_checked_when_the_body_runs_not_when_received(app: Celery) -> None:
    entered, gate = threading.Event(), threading.Event()
    ran: list[int] = []

    @app.task(shared=False)
    def block() -> None:
        entered.set()
        gate.wait(10)

    @app.task(shared=False)
    @leader_only(policy="skip")
    def late() -> None:
        ran.append(current_term())

    with run_worker(app):
        leading(app)
        feed = worker_feed(app)
        assert feed is not None
        block.delay()
        # Received while this worker leads, run after `block`: on `block`'s queue, not the
        # leader queue, which a worker stops taking from when it stops leading.
        waiting = late.apply_async(queue=app.conf.task_default_queue)
        assert entered.wait(5)
        with member(app, "rival") as rival:
            feed.elect("rival")  # hand leadership over while `late` waits
            assert rival.is_leader
            gate.set()
            assert settled(waiting) == SKIPPED
    assert ran == []


def test_a_direct_call_without_a_worker_is_an_error_unless_told_otherwise(
    app: Celery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decorators, "_warned_pid", None)  # warned once per process: again

    @app.task(shared=False)
    @leader_only
    def direct() -> str:
        return "ran"

    with pytest.raises(NotLeaderError, match="leaderfeed_eager_policy"):
        direct()  # never a silent None (leaderfeed_eager_policy: "error" by default)
    app.conf.leaderfeed_eager_policy = "follower"
    caplog.set_level(logging.INFO, logger="celery_leaderfeed")
    assert direct() is None
    assert "no worker lease is visible" in caplog.text
    assert "skipped" in caplog.text
    app.conf.leaderfeed_eager_policy = "run"
    assert direct() == "ran"


def test_the_decorator_keeps_the_signature_and_refuses_misuse(app: Celery) -> None:
    def original(a: int, b: str = "x", *, c: float) -> None:
        pass

    task = app.task(shared=False)(leader_only(original))
    assert inspect.signature(task.run) == inspect.signature(original)
    with pytest.raises(TypeError):
        task.delay(1, 2, 3)  # Celery still checks the arguments
    with pytest.raises(TypeError, match=r"below @app\.task"):
        leader_only(app.task(shared=False)(original))
    with pytest.raises(ConfigurationError, match="policy"):
        leader_only(policy="sometimes")  # type: ignore[call-overload]
