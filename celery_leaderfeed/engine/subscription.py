"""Keeping the change feed open: one pump thread per subscription, resubscribed with backoff.

The engine thread owns the :class:`SubscriptionSupervisor` and is the only one to call it. The
only other thread is the current subscription's pump, which turns what the feed delivers (or
how it broke) into :class:`FeedItem` / :class:`FeedLost` messages on the engine's queue. Every
subscription has a *generation*; a message from one that was dropped since is stale and ignored.

While no subscription is open the election reads the record every heartbeat
(:meth:`~.election.Election.feed_lost`). Subscribing again waits a jittered, doubling backoff
that only a feed that delivers resets, so a feed that breaks right after each subscribe backs
off instead of spinning.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import Backend, FeedEvent, Subscription
from ..errors import BackendUnavailable
from .election import Election
from .listeners import Emit, Event
from .retry import Backoff, FaultLog, refused_pace, report_interval

__all__ = ["FeedItem", "FeedLost", "FeedMessage", "SubscriptionSupervisor"]

logger = logging.getLogger("celery_leaderfeed")

#: How long a pump waits on the feed before it checks whether it was closed.
_POLL_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class FeedItem:
    """The subscription of ``generation`` delivered ``event``."""

    generation: int
    event: FeedEvent


@dataclass(frozen=True, slots=True)
class FeedLost:
    """The subscription of ``generation`` broke with ``error``."""

    generation: int
    error: BaseException


FeedMessage = FeedItem | FeedLost


class _Pump(threading.Thread):
    """Moves one subscription's events to ``sink`` until closed or broken."""

    def __init__(
        self,
        subscription: Subscription,
        generation: int,
        sink: Callable[[FeedMessage], None],
        name: str,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.subscription = subscription
        self.generation = generation
        self.sink = sink
        self._closed = threading.Event()

    def run(self) -> None:
        try:
            while not self._closed.is_set():
                for event in self.subscription.poll(_POLL_SECONDS):
                    self.sink(FeedItem(self.generation, event))
        except Exception as exc:  # noqa: BLE001 - any failure means the feed is gone
            if not self._closed.is_set():
                self.sink(FeedLost(self.generation, exc))
        finally:
            self.subscription.close()

    def close(self) -> None:
        """Ask the pump to end; it closes the subscription from its own thread."""
        self._closed.set()


class SubscriptionSupervisor:
    """Keeps one subscription to ``backend``'s change feed open and reports it to ``election``.

    ``sink`` puts a pump's messages on the engine's queue; the engine hands them back to
    :meth:`deliver`. Not thread-safe: the engine thread makes every call.
    """

    def __init__(
        self,
        backend: Backend,
        election: Election,
        sink: Callable[[FeedMessage], None],
        *,
        rng: random.Random,
        emit: Emit,
    ) -> None:
        timing = election.timing
        self._backend = backend
        self._election = election
        self._sink = sink
        self._emit = emit
        self._pump: _Pump | None = None
        self._generation = 0
        self._resubscribe_at: float | None = None
        self._backoff = Backoff(
            rng, 0.05, max(2.0, timing.heartbeat_interval), refused_cap=refused_pace(timing)
        )
        #: Faults of the change feed (the record's reads and writes have the election's).
        self.faults = FaultLog(logger, f"leaderfeed {backend.name!r}", report_interval(timing))

    def subscribe(self) -> None:
        """Open a subscription; if that fails, report it and plan the next attempt."""
        clock = self._election.clock
        try:
            subscription = self._backend.subscribe()
        except BackendUnavailable as exc:
            self._failed(exc, clock())
            return
        self._generation += 1
        self._pump = _Pump(
            subscription, self._generation, self._sink, f"leaderfeed-feed[{self._backend.name}]"
        )
        self._pump.start()
        self._resubscribe_at = None
        self._election.feed_started(clock())
        logger.debug(
            "leaderfeed %r: subscribed to %s", self._backend.name, self._backend.display_url
        )
        self._emit(Event.SUBSCRIBE_STARTED)

    def tick(self, now: float) -> float:
        """Subscribe again if that is due; the seconds until it is due (inf: not planned)."""
        if self._pump is None and self._resubscribe_at is not None and now >= self._resubscribe_at:
            self.subscribe()
        if self._resubscribe_at is None:
            return math.inf
        return max(0.0, self._resubscribe_at - self._election.clock())

    def went_quiet(self, now: float) -> None:
        """The election judged the feed deaf (:attr:`~.election.Turn.feed_quiet`): replace it."""
        quiet = BackendUnavailable("it went quiet while renewals went on")
        self.faults.failed(now, "the change feed", quiet, note="; subscribing again")
        self.close()
        self._election.feed_lost(now)
        self._resubscribe_at = now

    def deliver(self, message: FeedMessage, now: float) -> None:
        """Take in a pump's message (ignored if its subscription was dropped since)."""
        if message.generation != self._generation:
            return
        if isinstance(message, FeedItem):
            # It delivers, so it works: a feed that breaks right after each subscribe keeps
            # backing off instead.
            self._backoff.reset()
            self.faults.recovered(now, "the change feed")
            self._election.feed_event(message.event, now)
        elif self._pump is not None:
            self._pump = None
            self._failed(message.error, now)

    def close(self) -> None:
        """Drop the subscription; anything its pump still has in flight becomes stale."""
        pump, self._pump = self._pump, None
        if pump is not None:
            self._generation += 1
            pump.close()

    def _failed(self, error: BaseException, now: float) -> None:
        delay = self._backoff.next(error)
        heartbeat = self._election.timing.heartbeat_interval
        self.faults.failed(
            now,
            "the change feed",
            error,
            note=f"; reading the record every {heartbeat:g} s and subscribing again with backoff",
        )
        self._emit(Event.SUBSCRIBE_ERROR, error)
        self._election.feed_lost(now)
        self._resubscribe_at = now + delay
