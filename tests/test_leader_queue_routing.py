"""The leader queue in Celery's in-process test worker (memory store, session Redis broker).

Routing of ``@leader_only`` tasks and its precedence, the worker consuming the leader queue
exactly while it leads, the ``requeue`` policy sending a follower's message to the leader, and
the bad input the issue names (a route no leader consumes, a broker that cannot cancel).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_retry
from kombu.transport import memory

from celery_leaderfeed import leader_only
from celery_leaderfeed.celery.decorators import current_term
from celery_leaderfeed.celery.leader_queue import check_broker_cancels
from celery_leaderfeed.celery.worker_lease import leadership_report, worker_feed
from celery_leaderfeed.errors import ConfigurationError
from harness.helpers import wait_until
from tests.celery_apps.memory_app import make_app, member


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


def run_worker(app: Celery, **kwargs: Any) -> AbstractContextManager[Any]:
    kwargs.setdefault("pool", "solo")
    return start_worker(app, perform_ping_check=False, shutdown_timeout=20, **kwargs)


def queue_of(app: Celery, task: Any, **options: Any) -> str:
    route = app.amqp.router.route(
        {**task._get_exec_options(), **options}, task.name, task_type=task
    )
    return str(route["queue"].name)


def test_leader_only_tasks_go_to_the_leader_queue_unless_the_user_routes_them(
    app: Celery,
) -> None:
    leader_queue = f"{app.conf.leaderfeed_name}.leader"

    @app.task(shared=False)
    @leader_only
    def settle(batch: int) -> None: ...

    @app.task(shared=False, bind=True)
    @leader_only
    def bound(self: Any) -> None: ...

    @app.task(shared=False)
    def plain() -> None: ...

    assert queue_of(app, settle) == leader_queue
    assert queue_of(app, bound) == leader_queue
    assert queue_of(app, plain) == app.conf.task_default_queue
    assert queue_of(app, settle, queue="explicit") == "explicit"  # apply_async's queue wins
    # Sent by name, as beat and send_task do, from an app that knows the task.
    assert app.amqp.router.route({}, settle.name)["queue"].name == leader_queue

    # The user's task_routes come first, whenever they are set.
    app.conf.task_routes = {settle.name: {"queue": "users"}}
    app.amqp.flush_routes()
    app.amqp.__dict__.pop("router", None)
    assert queue_of(app, settle) == "users"
    assert queue_of(app, bound) == leader_queue

    renamed = make_app(app.conf.broker_url, leaderfeed_queue="billing-leader")

    @renamed.task(shared=False)
    @leader_only
    def elsewhere() -> None: ...

    assert queue_of(renamed, elsewhere) == "billing-leader"


def test_the_worker_consumes_the_leader_queue_exactly_while_it_leads(
    app: Celery, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    leader_queue = f"{app.conf.leaderfeed_name}.leader"
    ran: list[tuple[int, int]] = []

    @app.task(shared=False)
    @leader_only
    def settle(batch: int) -> int:
        ran.append((batch, current_term()))
        return batch

    def report() -> dict[str, Any]:
        return leadership_report(app) or {}

    with run_worker(app) as worker:
        feed = worker_feed(app)
        assert feed is not None and feed.wait_for_leadership(5)
        wait_until(lambda: report()["consuming_leader_queue"], 5, message="consuming")
        assert settle.delay(1).get(timeout=10) == 1
        with member(app, "rival") as rival:
            feed.elect("rival")
            assert rival.wait_for_leadership(5)
            wait_until(lambda: not report()["consuming_leader_queue"], 5, message="cancelled")
            waiting = [settle.delay(i) for i in range(2, 6)]
            # Nobody leading consumes the queue here (the rival is no worker): the messages
            # wait in it, and this follower takes none of them.
            wait_until(lambda: client.llen(leader_queue) == 4, 5, message="queued")
            assert ran == [(1, ran[0][1])]
            rival.elect(worker.hostname)
            assert feed.wait_for_leadership(5)
            assert [r.get(timeout=10) for r in waiting] == [2, 3, 4, 5]
        assert report()["leader_queue"] == leader_queue
    assert sorted(batch for batch, _ in ran) == [1, 2, 3, 4, 5]
    assert ran[-1][1] > ran[0][1]  # run under the later term
    client.close()


def test_requeue_sends_a_follower_message_to_the_leader_without_a_retry(
    app: Celery, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A user route sends the task to the worker's own queue, so it reaches a follower.
    app.conf.task_routes = {"*": {"queue": app.conf.task_default_queue}}
    ran: list[dict[str, Any]] = []
    retries: list[object] = []

    @app.task(shared=False, bind=True)
    @leader_only
    def settle(self: Any, batch: int) -> int:
        ran.append({"batch": batch, "id": self.request.id, "retries": self.request.retries})
        return batch

    def on_retry(sender: Any = None, **kwargs: Any) -> None:
        retries.append(kwargs)

    caplog.set_level(logging.INFO, logger="celery_leaderfeed")
    task_retry.connect(on_retry, weak=False)
    client = redis.Redis.from_url(redis_url)
    leader_queue = f"{app.conf.leaderfeed_name}.leader"
    try:
        with member(app, "rival") as rival:
            assert rival.wait_for_leadership(5)
            with run_worker(app) as worker:
                result = settle.delay(7)
                wait_until(lambda: "sent back to" in caplog.text, 10, message="requeued")
                wait_until(lambda: client.llen(leader_queue) == 1, 5, message="in leader queue")
                assert ran == [] and result.state == "PENDING"
                rival.elect(worker.hostname)
                assert result.get(timeout=10) == 7
    finally:
        task_retry.disconnect(on_retry)
        client.close()
    assert ran == [{"batch": 7, "id": result.id, "retries": 0}]
    assert retries == []


class _NoCancelChannel(memory.Channel):  # type: ignore[misc]
    basic_cancel = None  # a transport that cannot cancel a consumer


class NoCancelTransport(memory.Transport):  # type: ignore[misc]
    Channel = _NoCancelChannel


def test_a_broker_that_cannot_cancel_consumers_stops_the_worker_at_start(app: Celery) -> None:
    app.conf.broker_transport = f"{__name__}:NoCancelTransport"
    with pytest.raises(ConfigurationError, match="cannot cancel a consumer"):
        check_broker_cancels(app)
    with pytest.raises(ConfigurationError, match="cannot cancel a consumer"), run_worker(app):
        pass


def test_a_route_the_leader_does_not_consume_is_named_at_worker_start(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(shared=False)
    @leader_only
    def stray() -> None: ...

    @app.task(shared=False)
    @leader_only
    def fine() -> None: ...

    app.conf.task_routes = {stray.name: {"queue": "nobody-consumes-this"}}
    caplog.set_level(logging.WARNING, logger="celery_leaderfeed")
    with run_worker(app):
        pass
    warnings = [r.getMessage() for r in caplog.records if "is routed to queue" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert stray.name in warnings[0] and "nobody-consumes-this" in warnings[0]
