"""LeaderFeed's threads and lifecycle, on the in-process backend."""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from celery_leaderfeed import (
    BackendUnavailable,
    ConfigurationError,
    Event,
    LeaderFeed,
    LeaderfeedError,
    LeaderfeedTimeout,
    Resignation,
    Role,
    Status,
    Timing,
)
from celery_leaderfeed.backends.memory import MemoryStore, memory_store
from celery_leaderfeed.celery.settings import LeaderfeedSettings
from harness.helpers import wait_until

FAST = {"heartbeat_interval": 0.05, "election_timeout_min": 0.15, "election_timeout_max": 0.25}


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex}"


def test_lifecycle_statuses_and_roles(url: str) -> None:
    feed = LeaderFeed(url, member_id="solo", **FAST)
    assert (feed.status, feed.role, feed.is_leader, feed.leader_id) == (
        Status.STOPPED,
        Role.FOLLOWER,
        False,
        None,
    )
    seen: list[Role] = []
    feed.on("new_state", seen.append)
    with feed:
        assert feed.status is Status.STARTED
        assert feed.wait_for_leadership(timeout=5)
        assert feed.role is Role.LEADER and feed.leader_id == "solo"
        assert feed.term is not None and feed.term == feed.lease.term
    assert feed.status is Status.STOPPED
    assert not feed.is_leader
    wait_until(lambda: seen == [Role.LEADER, Role.FOLLOWER], 2)
    record = memory_store(url).observe("default").record
    assert record is not None and record.vacant  # stop() resigned


def test_a_feed_can_be_started_again_after_stop(url: str) -> None:
    feed = LeaderFeed(url, **FAST)
    feed.start()
    assert feed.wait_for_leadership(5)
    first = feed.term
    feed.stop()
    feed.start()
    try:
        assert feed.wait_for_leadership(5)
        assert feed.term is not None and first is not None and feed.term > first
    finally:
        feed.stop()


def test_starting_twice_is_an_error(url: str) -> None:
    with LeaderFeed(url, **FAST) as feed, pytest.raises(LeaderfeedError, match="started"):
        feed.start()


def test_start_reports_an_unreachable_store(url: str) -> None:
    store = memory_store(url)
    feed = LeaderFeed(url, **FAST)
    with store.outage(), pytest.raises(BackendUnavailable, match="unavailable"):
        feed.start()
    assert feed.status is Status.STOPPED


def test_start_with_retry_connects_once_the_store_is_back(url: str) -> None:
    store = memory_store(url)
    errors: list[Exception] = []
    feed = LeaderFeed(url, **FAST)
    feed.on(Event.HEARTBEAT_ERROR, errors.append)
    store.set_available(False)
    try:
        feed.start(retry=True)
        wait_until(lambda: errors, 5, message="a reported connection failure")
        assert feed.status is Status.STARTING
        store.set_available(True)
        assert feed.wait_for_leadership(5)
    finally:
        store.set_available(True)
        feed.stop()


def test_a_raising_listener_is_logged_and_the_engine_keeps_going(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="celery_leaderfeed")
    after: list[Role] = []

    def broken(role: Role) -> None:
        raise RuntimeError("listener bug")

    feed = LeaderFeed(url, **FAST)
    feed.on("new state", broken)  # the original's spelling works too
    feed.on(Event.NEW_STATE, after.append)
    with feed:
        assert feed.wait_for_leadership(5)
        wait_until(lambda: after == [Role.LEADER], 2)
        renewed = feed.lease.deadline
        wait_until(lambda: feed.lease.deadline > renewed, 2, message="renewals continue")
    assert "listener bug" in caplog.text


def test_a_slow_listener_does_not_delay_renewals(url: str) -> None:
    release = threading.Event()
    feed = LeaderFeed(url, **FAST)
    feed.on("new_state", lambda role: release.wait(5))
    with feed:
        assert feed.wait_for_leadership(5)
        first = feed.lease.deadline
        wait_until(lambda: feed.lease.deadline > first + 0.1, 2, message="renewals while blocked")
        assert feed.is_leader
        release.set()


def test_listener_removal(url: str) -> None:
    seen: list[str | None] = []
    feed = LeaderFeed(url, **FAST)
    remove = feed.on("new_leader", seen.append)
    remove()
    with feed:
        assert feed.wait_for_leadership(5)
    assert seen == []


def test_unknown_events_and_bad_listeners_are_rejected() -> None:
    feed = LeaderFeed("memory://x", **FAST)
    with pytest.raises(ConfigurationError, match="unknown event"):
        feed.on("became_leader", print)
    with pytest.raises(ConfigurationError, match="callable"):
        feed.on("new_state", "print")  # type: ignore[arg-type]


def test_elect_times_out_for_a_member_that_never_takes_over(url: str) -> None:
    with LeaderFeed(url, member_id="a", **FAST) as feed:
        assert feed.wait_for_leadership(5)
        with pytest.raises(LeaderfeedTimeout, match="ghost"):
            feed.elect("ghost", timeout=0.05)
        assert not feed.is_leader  # it handed over, as asked


def test_resign_hooks_run_before_an_elect_hands_over_and_one_that_raises_is_logged(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = LeaderFeed(url, member_id="first", **FAST).start()
    second = LeaderFeed(url, member_id="second", **FAST).start()
    seen: list[tuple[Resignation, bool, str | None]] = []

    def hook(resignation: Resignation) -> None:
        seen.append((resignation, first.is_leader, first.backend.read().leader_id))

    def broken(resignation: Resignation) -> None:
        raise RuntimeError("hook failed")

    first.add_resign_hook(hook)
    first.add_resign_hook(broken)
    try:
        assert first.wait_for_leadership(5)
        with caplog.at_level(logging.ERROR, logger="celery_leaderfeed"):
            first.elect("second", timeout=5)
        assert second.wait_for_leadership(5)
        [(resignation, leading, holder)] = seen
        assert (resignation.nominee, leading, holder) == ("second", True, "first")
        assert "resign hook" in caplog.text and "hook failed" in caplog.text
    finally:
        first.stop()  # a follower: resigns nothing
        second.stop()
    assert len(seen) == 1


def test_elect_needs_a_started_feed() -> None:
    with pytest.raises(LeaderfeedError, match="stopped"):
        LeaderFeed("memory://x", **FAST).elect()


def test_wait_for_leader_returns_none_on_timeout(url: str) -> None:
    feed = LeaderFeed(url, **FAST)
    with memory_store(url).outage():
        feed.start(retry=True)
        try:
            assert feed.wait_for_leader(timeout=0.05) is None
            assert not feed.wait_for_leadership(timeout=0.05)
        finally:
            feed.stop()


def test_observers_see_every_renewal(url: str) -> None:
    deadlines: list[float] = []
    feed = LeaderFeed(url, **FAST)
    feed.add_observer(lambda f: deadlines.append(f.lease.deadline))
    with feed:
        assert feed.wait_for_leadership(5)
        wait_until(lambda: len(set(deadlines)) >= 4, 3, message="several renewals observed")
        stats = feed.stats
    assert stats.claims == stats.claims_won == 1
    assert stats.renewals >= 2 and stats.renewals_failed == 0
    assert stats.feed_events >= stats.renewals - 1  # it hears its own renewals


def test_observers_are_called_once_per_renewal(url: str) -> None:
    # A renewal changes the lease and the record: one notification for both, so the worker's
    # shared segment is written once per heartbeat.
    renewals: list[int] = []
    feed = LeaderFeed(url, **FAST)
    feed.add_observer(lambda f: renewals.append(f.stats.renewals))
    with feed:
        assert feed.wait_for_leadership(5)
        first = feed.stats.renewals
        wait_until(lambda: feed.stats.renewals >= first + 8, 5, message="renewals")
        seen = list(renewals)
    steady = seen[-6:]
    assert steady == list(range(steady[0], steady[0] + 6)), seen


def test_new_state_passes_the_term_to_listeners_that_take_it(url: str) -> None:
    both: list[tuple[Role, int]] = []
    roles: list[Role] = []
    feed = LeaderFeed(url, **FAST)
    feed.on(Event.NEW_STATE, lambda role, term: both.append((role, term)))
    feed.on(Event.NEW_STATE, roles.append)  # one argument: the role alone, as before
    with feed:
        assert feed.wait_for_leadership(5)
        term = feed.term
    assert term is not None
    wait_until(lambda: len(both) == 2, 2, message="both changes of role")
    assert both == [(Role.LEADER, term), (Role.FOLLOWER, term)]
    assert roles == [Role.LEADER, Role.FOLLOWER]


def test_timings_come_as_a_timing_or_as_keywords(url: str) -> None:
    timing = Timing(**FAST)
    assert LeaderFeed(url, timing=timing).timing is timing
    assert LeaderFeed(url, **FAST).timing == timing
    assert LeaderFeed(url).timing == Timing()
    with pytest.raises(ConfigurationError, match="not both"):
        LeaderFeed(url, timing=timing, heartbeat_interval=0.05)


def test_settings_hand_their_timing_to_the_feed(url: str) -> None:
    timing = Timing(**FAST)
    settings = LeaderfeedSettings(backend_url=url, name="app", timing=timing)
    feed = settings.feed("me", election="app.beat")
    assert (feed.timing, feed.name, feed.id) == (timing, "app.beat", "me")
    assert feed.timing is timing


def test_repr_never_shows_a_password() -> None:
    feed = LeaderFeed("memory://x", member_id="me", **FAST)
    assert "me" in repr(feed) and "memory://x" in repr(feed)
    redis_feed = LeaderFeed("redis://:hunter2@localhost:1/0", **FAST)
    assert "hunter2" not in repr(redis_feed)
    assert "hunter2" not in repr(redis_feed.backend)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval must be a positive"),
        ({"heartbeat_interval": -1}, "heartbeat_interval must be a positive"),
        ({"heartbeat_interval": "1"}, "heartbeat_interval must be a number"),
        ({"heartbeat_interval": True}, "heartbeat_interval must be a number"),
        ({"heartbeat_interval": float("nan")}, "finite"),
        ({"election_timeout_min": 1.5}, r"election_timeout_min \(1.5 s\) must be at least twice"),
        ({"election_timeout_max": 3.0}, r"election_timeout_max \(3 s\) must be greater"),
        ({"operation_timeout": 2.5}, r"operation_timeout \(2.5 s\) must not exceed"),
        ({"member_id": ""}, "member_id"),
        ({"member_id": 5}, "member_id"),
        ({"name": "bad name!"}, "election name"),
        ({"options": {"colour": "red"}}, "unknown option"),
    ],
)
def test_bad_options_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LeaderFeed("memory://x", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "non-empty"),
        (42, "non-empty string"),
        ("localhost:6379", "not a URL"),
        ("mysql://db/x", "no leaderfeed backend for mysql://"),
        ("redis://:pw@host:notaport/0", "invalid Redis URL"),
    ],
)
def test_bad_urls_fail_at_construction(url: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        LeaderFeed(url)  # type: ignore[arg-type]
    assert "pw@" not in str(raised.value)


def test_private_memory_store_option() -> None:
    store = MemoryStore()
    with LeaderFeed("memory://", options={"store": store}, **FAST) as feed:
        assert feed.wait_for_leadership(5)
    assert ("default", "claim") in store.operations
