"""The leader queue: where ``@leader_only`` tasks are sent, consumed only by the leading worker.

Each election has one queue, ``leaderfeed_queue`` (default ``<leaderfeed_name>.leader``).

Routing (``install(app)`` adds it; a client that only sends tasks calls ``install`` too)
    A ``@leader_only`` task goes to the leader queue unless something the user wrote says
    otherwise, in Celery's own order of precedence: a ``queue``/``exchange``/``routing_key``
    given to ``apply_async`` or ``send_task``, then the task's own ``queue`` option, then the
    user's ``task_routes`` (every router the user configured, first match wins), and only then
    this router, which Celery consults last. A task sent by name (``send_task``) from a client
    that has not imported the task's code is not known to be leader-only: pass
    ``queue=leader_queue(app)`` there. The queue is declared by the producer on first publish
    (a direct exchange of the same name), like any queue Celery creates on demand; it is not
    added to ``task_queues``, so a worker started without ``-Q`` does not consume it.

Consumption (:class:`LeaderQueueConsumer`, driven by the worker step)
    The worker starts consuming the queue once its lease is valid and stops when the lease
    ends - before it resigns on a graceful handover (``hand_over``) and before the engine
    writes the resign of an ``elect`` (the engine's resign hook), at once when it notices the
    lease ran out (a pause, a lost store: that cannot be announced in advance). The broker's
    consumer is changed on the worker's event loop (``consumer.call_soon``), the way Celery's
    own ``add_consumer`` / ``cancel_consumer`` control commands do it; the engine thread that
    reports a change never waits for it, and the resign hook waits at most until its deadline.

What no cancellation can prevent - a message prefetched just before the lease ended - the
body-time check of ``@leader_only`` sends back to the leader queue (the ``requeue`` policy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from ._extras import celery_extra

with celery_extra():
    from celery.app.amqp import AMQP
    from celery.utils.imports import symbol_by_name
    from kombu.entity import Exchange, Queue

from ..errors import ConfigurationError
from .settings import leader_queue_name

__all__ = [
    "LEADER_ONLY_MARK",
    "LeaderQueueConsumer",
    "check_broker_cancels",
    "install_routing",
    "is_leader_only",
    "leader_queue",
    "misrouted_leader_tasks",
]

logger = logging.getLogger("celery_leaderfeed")

#: Attribute ``@leader_only`` sets on the function it returns.
LEADER_ONLY_MARK = "__leaderfeed_leader_only__"
#: How long a graceful handover waits for the event loop to cancel the consumer.
_CANCEL_WAIT_SECONDS = 2.0
_CANCEL_POLL_SECONDS = 0.01


def is_leader_only(task: Any) -> bool:
    """True if ``task`` (a task instance or class) runs a ``@leader_only`` body."""
    return bool(getattr(getattr(task, "run", None), LEADER_ONLY_MARK, False))


def leader_queue(app: Any) -> Any:
    """The leader queue of ``app``'s election as a ``kombu.Queue``.

    The user's own definition if ``task_queues`` holds one of that name (a quorum queue, say),
    else a durable queue bound to a direct exchange of the same name.
    """
    name = leader_queue_name(app)
    queues = app.amqp.queues
    if name in queues:  # `in`, not [] - [] creates missing queues
        return queues[name]
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


class _LeaderRouter:
    """Celery router consulted after the user's: ``@leader_only`` tasks to the leader queue."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(
        self, name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
    ) -> dict[str, Any] | None:
        if task is None:
            task = self.app.tasks.get(name)
        if task is None or not is_leader_only(task):
            return None
        return {"queue": leader_queue(self.app)}


class LeaderfeedAMQP(AMQP):  # type: ignore[misc]
    """Celery's ``AMQP`` whose routes end with the leader-queue router (see the module doc)."""

    routes_leader_only = True

    def flush_routes(self) -> None:
        super().flush_routes()
        amqp: Any = self  # Celery's AMQP is untyped
        amqp._rtable = [*amqp._rtable, _LeaderRouter(amqp.app)]


#: Where ``app.amqp_cls`` points: a string, so the app still pickles (spawned pool children).
_AMQP_PATH = f"{__name__}:LeaderfeedAMQP"


def install_routing(app: Any) -> None:
    """Make ``app`` route ``@leader_only`` tasks to the leader queue after the user's routes.

    ``task_routes`` is the user's and may be replaced after ``install(app)``; so the router is
    appended where Celery assembles the routes (``AMQP.flush_routes``), every time.
    """
    base = app.amqp_cls
    if isinstance(base, str):
        base = symbol_by_name(base)
    if getattr(base, "routes_leader_only", False):
        return
    if base is not AMQP:
        raise ConfigurationError(
            f"leaderfeed routes leader-only tasks through Celery's AMQP class; this app uses "
            f"{base!r} (amqp_cls): subclass celery_leaderfeed.celery.leader_queue"
            ".LeaderfeedAMQP instead"
        )
    app.amqp_cls = _AMQP_PATH
    amqp = app.__dict__.get("amqp")  # already built: give it the same behaviour
    if amqp is not None:
        amqp.__class__ = LeaderfeedAMQP
        amqp.flush_routes()
        amqp.__dict__.pop("router", None)


def check_broker_cancels(app: Any) -> None:
    """Refuse a broker whose channels cannot cancel a consumer (checked without connecting).

    Leadership could then never stop a worker from taking leader-only tasks.
    """
    connection = app.connection_for_read()
    try:
        transport = connection.transport_cls
        transport_object = connection.transport
        # Virtual transports (Redis...) name their channel class on the transport, py-amqp
        # on its connection class.
        channel_class = getattr(transport_object, "Channel", None) or getattr(
            getattr(transport_object, "Connection", None), "Channel", None
        )
    finally:
        connection.release()
    if not callable(getattr(channel_class, "basic_cancel", None)):
        raise ConfigurationError(
            f"the broker transport {transport!r} cannot cancel a consumer, so a worker that "
            "stops leading could not stop taking leader-only tasks; use a broker whose "
            "transport can (Redis, RabbitMQ)"
        )


def misrouted_leader_tasks(app: Any, consumed: Iterable[str]) -> list[tuple[str, str]]:
    """``(task, queue)`` of each leader-only task routed to a queue this worker, as leader,
    would not consume: neither the leader queue nor one of ``consumed``."""
    queue = leader_queue_name(app)
    consumed = {queue, *consumed}
    router = app.amqp.router
    found = []
    for name, task in sorted(app.tasks.items()):
        if not is_leader_only(task):
            continue
        try:
            route = router.route(dict(task._get_exec_options()), name, (), {}, task_type=task)
        except Exception as exc:  # noqa: BLE001 - a broken user router: say so, never crash
            found.append((name, f"<routing failed: {exc!r}>"))
            continue
        target = route.get("queue")
        target_name = getattr(target, "name", target)
        if isinstance(target_name, str) and target_name not in consumed:
            found.append((name, target_name))
    return found


class LeaderQueueConsumer:
    """Adds and cancels this worker's consumer of the leader queue on its event loop.

    ``want(True/False)`` may be called from any thread and never blocks; the change runs
    through ``consumer.call_soon``. ``stop_consuming(wait=...)`` is the graceful variant that
    waits (bounded) until the broker consumer is cancelled.
    """

    def __init__(self, app: Any, consumer: Any) -> None:
        self.app = app
        self.consumer = consumer
        self.queue = leader_queue(app)
        self._lock = threading.Lock()
        self._wanted = False
        #: True once the event loop added the consumer, False once it cancelled it.
        self.consuming = False
        self._settled = threading.Event()
        self._settled.set()

    def want(self, consuming: bool) -> None:
        """Consume the queue (leader) or not (anything else); applied on the event loop."""
        with self._lock:
            if consuming == self._wanted == self.consuming:
                return  # (a change that failed on the loop is tried again on the next call)
            self._wanted = consuming
            self._settled.clear()
        self.consumer.call_soon(self._apply)

    def stop_consuming(self, wait: bool, timeout: float = _CANCEL_WAIT_SECONDS) -> bool:
        """Stop consuming; with ``wait``, until the event loop did it, for at most ``timeout``
        seconds. True if done."""
        self.want(False)
        deadline = time.monotonic() + timeout
        # Checked again and again: a shutdown signal is announced before Celery marks the
        # shutdown, so the loop may stop running callbacks while we wait.
        while wait and self._loop_running() and time.monotonic() < deadline:
            if self._settled.wait(_CANCEL_POLL_SECONDS):
                return True
        return not self.consuming

    def _loop_running(self) -> bool:
        """True while the event loop still runs callbacks: not once a shutdown was asked for
        (the loop then exits without taking another message, and Celery cancels every
        consumer itself)."""
        from celery.worker import state  # noqa: PLC0415

        if state.should_stop not in (None, False) or state.should_terminate not in (None, False):
            return False
        blueprint = getattr(self.consumer, "blueprint", None)
        return getattr(blueprint, "state", None) == 1  # bootsteps.RUN

    def _apply(self) -> None:
        """On the event loop: make the broker consumer match what is wanted now."""
        with self._lock:
            wanted = self._wanted
        try:
            if wanted and not self.consuming:
                self._add()
            elif not wanted and self.consuming:
                self.consumer.cancel_task_queue(self.queue.name)
                self.consuming = False
                logger.info("leaderfeed: stopped consuming the leader queue %s", self.queue.name)
        except Exception:
            logger.exception("leaderfeed: could not change the consumer of %s", self.queue.name)
        finally:
            with self._lock:
                if wanted == self._wanted:
                    self._settled.set()

    def _add(self) -> None:
        consumer = self.consumer
        if consumer.task_consumer is None:  # not connected yet: the loop calls us again later
            self.consumer.call_soon(self._apply)
            return
        queue = self.queue
        consumer.add_task_queue(
            queue.name,
            exchange=queue.exchange.name,
            exchange_type=queue.exchange.type,
            routing_key=queue.routing_key,
        )
        self.consuming = True
        logger.info("leaderfeed: consuming the leader queue %s", queue.name)

    def held_messages(self) -> int:
        """Leader-queue messages this worker holds: reserved (prefetched, waiting) or running."""
        from celery.worker import state  # noqa: PLC0415

        return sum(1 for request in list(state.reserved_requests) if self._from_queue(request))

    def _from_queue(self, request: Any) -> bool:
        info = getattr(request, "delivery_info", None) or {}
        return bool(
            info.get("routing_key") == self.queue.routing_key
            or (info.get("exchange") == self.queue.exchange.name and self.queue.exchange.name)
        )
