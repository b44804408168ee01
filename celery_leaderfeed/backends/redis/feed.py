"""The Redis change feed: pub/sub on the election's channel, with its own PING.

On a single server and behind Sentinel it is classic pub/sub (``SUBSCRIBE``; behind Sentinel the
connection is made to the master the sentinels name at that moment, and Sentinel closes the
clients of a demoted master, so a failover breaks the feed and the engine subscribes again, to
the new master). On a Redis >= 7 Cluster it is sharded pub/sub (``SSUBSCRIBE`` on the node that
owns the election's slot): messages stay on that shard instead of crossing the whole cluster
bus, and a slot that moves ends the subscription (``sunsubscribe``), which is reported as a
broken feed so that the engine subscribes again where the slot now lives.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from ...errors import BackendUnavailable
from ..base import FeedEvent, RecordChanged, Subscription
from .replies import observation

if TYPE_CHECKING:
    from .backend import RedisBackend

__all__ = ["RedisSubscription"]


class _Closeable(Protocol):
    def close(self) -> None: ...


class _PubSub(_Closeable, Protocol):
    """What is used of redis-py's ``PubSub``, typed the same under every supported release
    (older releases leave ``Redis.pubsub()`` and most ``PubSub`` methods unannotated)."""

    def subscribe(self, *channels: str) -> object: ...

    def ssubscribe(self, *channels: str) -> object: ...

    def get_message(self, *, timeout: float) -> dict[str, Any] | None: ...

    def ping(self, message: str) -> object: ...


class RedisSubscription(Subscription):
    """Pub/sub on the election's channel, with its own PING to notice a silent connection."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._sharded = backend.sharded
        self._pubsub = cast("Callable[[], _PubSub]", backend.feed_client().pubsub)()
        self._ping_every = max(backend.timeout, 0.5)
        self._ping_sent_at: float | None = None
        self._ping_payload = uuid.uuid4().hex
        self._closed = False
        prefix = "s" if self._sharded else ""
        self._confirmed, self._message = f"{prefix}subscribe", f"{prefix}message"
        try:
            if self._sharded:
                self._pubsub.ssubscribe(backend.channel)
            else:
                self._pubsub.subscribe(backend.channel)
            self._await_confirmation()
        except BaseException:
            self._pubsub.close()
            raise
        self._heard_at = self._master_checked_at = time.monotonic()

    def _await_confirmation(self) -> None:
        # The engine reads the record right after subscribing; the subscription must be live
        # by then or a write in between would be missed.
        deadline = time.monotonic() + self._backend.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == self._confirmed:
                return
        raise BackendUnavailable("Redis did not confirm the subscription in time")

    def poll(self, timeout: float) -> list[FeedEvent]:
        if self._closed:
            raise BackendUnavailable("the change feed is closed")
        with self._backend.mapped_errors("change feed"):
            self._check_alive()
            events: list[FeedEvent] = []
            message = self._pubsub.get_message(timeout=timeout)
            while message is not None:
                self._heard_at = time.monotonic()
                kind = message["type"]
                if kind == "pong":
                    self._ping_sent_at = None
                elif kind == self._message:
                    events.append(RecordChanged(observation(message["data"], None)))
                elif kind == "sunsubscribe":
                    raise BackendUnavailable(
                        "the Cluster moved the election's slot (sharded pub/sub ended)"
                    )
                message = self._pubsub.get_message(timeout=0)
            return events

    def _check_alive(self) -> None:
        now = time.monotonic()
        if now - self._master_checked_at > self._ping_every:
            self._master_checked_at = now
            self._check_master()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > self._backend.timeout:
                raise BackendUnavailable("the pub/sub connection stopped answering PING")
        elif now - self._heard_at > self._ping_every:
            self._pubsub.ping(self._ping_payload)
            self._ping_sent_at = now

    def _check_master(self) -> None:
        # Behind Sentinel the old master keeps its clients for seconds after a failover and
        # hears none of the new master's writes (while it may still carry a stale leader's):
        # move as soon as the sentinels say so, busy feed or not.
        master = self._backend.follow_master()
        connection = getattr(self._pubsub, "connection", None)
        if master is None or connection is None:
            return
        if (str(connection.host), int(connection.port)) != (str(master[0]), int(master[1])):
            raise BackendUnavailable(
                f"the sentinels name another master ({master[0]}:{master[1]}); subscribing there"
            )

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):  # the connection may already be gone
            self._pubsub.close()
