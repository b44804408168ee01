"""The engine against a store that refuses it for good: an ERROR naming the cause and the fix,
said once per report interval, and store calls slowed by backoff - never a loop at full speed.
On the in-process backend, which refuses while the test says so.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter

import pytest

from celery_leaderfeed import BackendUnavailable, LeaderFeed, StoreRefused
from celery_leaderfeed.backends.base import FeedEvent, Subscription
from celery_leaderfeed.backends.memory import MemoryBackend
from celery_leaderfeed.record import Observation, WriteResult
from harness.helpers import wait_until

FAST = {"heartbeat_interval": 0.05, "election_timeout_min": 0.15, "election_timeout_max": 0.25}
CAUSE = "the store refused the password for user 'default'"


class RefusingBackend(MemoryBackend):
    """A memory backend that refuses every call while ``refusing`` is set, counting them."""

    def _configure(self) -> None:
        super()._configure()
        self.refusing = threading.Event()
        self.calls: Counter[str] = Counter()

    def _gate(self, call: str) -> None:
        self.calls[call] += 1
        if self.refusing.is_set():
            raise StoreRefused(
                f"{CAUSE} at {self.display_url}: check the password",
                cause=CAUSE,
                fix="check the password",
            )

    def _connect(self) -> None:
        self._gate("connect")
        super()._connect()

    def _read(self) -> Observation:
        self._gate("read")
        return super()._read()

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        self._gate("claim")
        return super()._claim(expected_version, holder, token, min_term, min_version)

    def _renew(self, term: int, token: str) -> WriteResult:
        self._gate("renew")
        return super()._renew(term, token)


@pytest.fixture
def backend() -> RefusingBackend:
    return RefusingBackend(f"memory://{uuid.uuid4().hex}", name="refused", timeout=0.05)


def engine_lines(caplog: pytest.LogCaptureFixture, level: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "celery_leaderfeed" and record.levelname == level
    ]


def test_a_refusal_at_start_is_one_error_and_slow_retries_until_fixed(
    backend: RefusingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.refusing.set()
    feed = LeaderFeed(backend, member_id="m", **FAST)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed"):
        feed.start(retry=True)
        try:
            wait_until(lambda: backend.calls["connect"] >= 5, 10, interval=0.01)
            calls_at_5 = sum(backend.calls.values())
            errors = engine_lines(caplog, "ERROR")
            assert len(errors) == 1, errors  # the next one is due after 15 x 0.25 s
            assert CAUSE in errors[0] and "check the password" in errors[0]
            assert feed.fault is not None and CAUSE in feed.fault
            assert calls_at_5 == 5  # attempts are spaced out: nothing else was tried
            backend.refusing.clear()  # an operator fixed the password in the store
            assert feed.wait_for_leadership(10)
        finally:
            feed.stop()
    assert feed.fault is None
    assert any("works again" in line for line in engine_lines(caplog, "INFO"))


def test_a_refusal_while_running_slows_every_store_call(
    backend: RefusingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    feed = LeaderFeed(backend, member_id="m", **FAST)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed"):
        feed.start()
        try:
            assert feed.wait_for_leadership(5)
            backend.calls.clear()
            backend.refusing.set()
            wait_until(lambda: not feed.is_leader, 2, interval=0.01)
            threading.Event().wait(3.0)  # the window whose calls are counted
            calls = sum(backend.calls.values())
            # Without backoff: renewals every 12.5 ms, then a claim every 50 ms (~70 calls).
            assert calls <= 20, backend.calls
            errors = engine_lines(caplog, "ERROR")
            assert len(errors) == 1 and CAUSE in errors[0], errors
        finally:
            backend.refusing.clear()
            feed.stop()


class _DeadOnArrival(Subscription):
    """A feed that subscribes fine and breaks at its first poll (a proxy cutting pub/sub)."""

    def poll(self, timeout: float) -> list[FeedEvent]:
        raise BackendUnavailable("the feed broke")

    def close(self) -> None:
        pass


class BreakingFeedBackend(RefusingBackend):
    def _subscribe(self) -> Subscription:
        self.calls["subscribe"] += 1
        return _DeadOnArrival()


def test_a_feed_that_breaks_after_each_subscribe_is_resubscribed_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = BreakingFeedBackend(f"memory://{uuid.uuid4().hex}", name="deaf", timeout=0.05)
    feed = LeaderFeed(backend, member_id="m", **FAST)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed"):
        feed.start()
        try:
            assert feed.wait_for_leadership(5)  # reading the record every heartbeat instead
            threading.Event().wait(3.0)  # the window whose subscriptions are counted
        finally:
            feed.stop()
    # Without backoff (reset by every subscribe that succeeded): one every 25-50 ms.
    assert backend.calls["subscribe"] <= 10, backend.calls
    warnings = engine_lines(caplog, "WARNING")
    assert len(warnings) == 1 and "the change feed failed: the feed broke" in warnings[0]
