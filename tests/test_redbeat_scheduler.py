"""Unit tests of ``LeaderRedBeatScheduler`` against a real Redis, in this process.

The election runs on the in-process memory store with leadership taken by hand and the
scheduler's clocks moved by the test (see :mod:`tests.beat_support`); RedBeat's entries live in
the session's redis-server (``redis_url``) under a prefix of their own, or in a private server
the test stops (``redis_fault_server``). Sends are captured at ``app.send_task``.
"""

from __future__ import annotations

import json
import logging
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from celery.schedules import crontab
from celery.utils.imports import load_extension_class_names
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import (
    RedBeatScheduler,
    RedBeatSchedulerEntry,
    acquire_distributed_beat_lock,
)
from redbeat.schedules import rrule

from celery_leaderfeed.celery.occurrences import occurrence_id
from celery_leaderfeed.celery.scheduler import LeaderScheduler
from celery_leaderfeed.contrib.redbeat import LeaderRedBeatScheduler
from tests.beat_support import HEARTBEAT, T0, Clocks, HandLeadership, Sent, make_app, stored
from tests.fixtures.redis_server import RedisFaultServer

TASK = "tests.redbeat_pulse"  # not registered: sends go through the recorded app.send_task


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


class RedBeatWorld:
    """An app whose RedBeat keys live under a prefix of their own, and its schedulers."""

    def __init__(self, store_url: str, redis_url: str, sent: Sent, **conf: Any) -> None:
        self.prefix = f"rb-{uuid.uuid4().hex[:10]}:"
        self.app = make_app(
            store_url,
            redbeat_redis_url=redis_url,
            redbeat_key_prefix=self.prefix,
            **{"beat_schedule": {}, **conf},
        )
        self.app.send_task = sent  # type: ignore[method-assign]
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.made: list[Any] = []

    def scheduler(self, member: str, clocks: Clocks, *, leading: bool = True) -> tuple[Any, Any]:
        leadership = HandLeadership(self.app.conf.leaderfeed_backend, "cluster", member)
        if leading:
            leadership.take()
        scheduler = LeaderRedBeatScheduler(
            self.app, leadership=leadership, clock=clocks.now, monotonic=clocks.monotonic
        )
        self.made.append(scheduler)
        return scheduler, leadership

    def entry(self, name: str, every: float = 0.5, **options: Any) -> Any:
        """Save an entry the way a RedBeat user does at runtime."""
        return RedBeatSchedulerEntry(name, TASK, every, app=self.app, **options).save()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def meta(self, name: str) -> dict[str, Any]:
        return RedBeatSchedulerEntry.decode_meta(self.client.hget(self.key(name), "meta"))  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        """Every RedBeat key of this app with its contents, to see whether anything wrote."""
        contents: dict[str, Any] = {}
        for key in sorted(self.client.scan_iter(match=f"{self.prefix}*")):
            kind = self.client.type(key)
            if kind == "hash":
                contents[key] = self.client.hgetall(key)
            elif kind == "zset":
                contents[key] = self.client.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                contents[key] = sorted(self.client.smembers(key))
            else:
                contents[key] = (kind, self.client.dump(key))
        return contents

    def lock_keys(self) -> list[str]:
        """RedBeat lock keys: this app's (any ``*lock*`` under its prefix) and the default one."""
        found = list(self.client.scan_iter(match=f"{self.prefix}*lock*"))
        return found + [key for key in ("redbeat::lock",) if self.client.exists(key)]

    def close(self) -> None:
        for scheduler in self.made:
            scheduler.close()
        for key in self.client.scan_iter(match=f"{self.prefix}*"):
            self.client.delete(key)
        self.client.close()
        connection = getattr(self.app, "redbeat_redis", None)
        if connection is not None:
            connection.close()


@pytest.fixture
def world(store_url: str, redis_url: str, sent: Sent) -> Iterator[RedBeatWorld]:
    world = RedBeatWorld(store_url, redis_url, sent)
    try:
        yield world
    finally:
        world.close()


def pulse(seconds: float, name: str = "pulse") -> str:
    return occurrence_id(name, T0 + timedelta(seconds=seconds))


def ticks(scheduler: Any, clocks: Clocks, count: int, step: float = 0.5) -> None:
    for _ in range(count):
        clocks.advance(step)
        scheduler.tick()


def test_the_beat_alias_resolves_to_the_redbeat_scheduler() -> None:
    aliases = dict(load_extension_class_names("celery.beat_schedulers"))
    expected = "celery_leaderfeed.contrib.redbeat:LeaderRedBeatScheduler"
    assert aliases["leaderfeed-redbeat"] == expected


# -- entries saved at runtime, and RedBeat's lock --------------------------------------------------


def test_an_entry_saved_at_runtime_is_picked_up_and_sent_once_per_occurrence(
    world: RedBeatWorld, clocks: Clocks, sent: Sent
) -> None:
    scheduler, leadership = world.scheduler("a", clocks)
    scheduler.tick()  # leading, with no entry yet
    assert sent.calls == []
    world.entry("pulse")  # saved while the beat runs
    scheduler.tick()  # seen: its interval starts now
    ticks(scheduler, clocks, 3)
    assert sent.occurrences == [pulse(0.5), pulse(1.0), pulse(1.5)]
    name, headers = sent.calls[0]
    assert (name, headers["leaderfeed_term"], headers["leaderfeed_sender"]) == (
        TASK,
        leadership.term,
        "a",
    )
    assert stored(world.app.conf.leaderfeed_backend)["pulse"].runs == 3


def test_redbeats_lock_handler_takes_no_lock_for_a_leader_gated_scheduler(
    world: RedBeatWorld, clocks: Clocks
) -> None:
    """RedBeat's module-level beat_init handler runs in every beat that imported redbeat."""
    gated, _ = world.scheduler("a", clocks)
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=gated))
    gated.tick()
    assert gated.lock is None
    assert world.lock_keys() == []
    # The check sees RedBeat's own lock: the original scheduler takes it in the same handler.
    original = RedBeatScheduler(world.app)
    try:
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=original))
        assert world.lock_keys() == [world.key(":lock")]
    finally:
        original.close()
    assert world.lock_keys() == []


def test_redbeats_lock_handler_is_harmless_beside_the_plain_leader_scheduler(
    app: Celery, store_url: str, clocks: Clocks
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    scheduler = LeaderScheduler(
        app, leadership=leadership, clock=clocks.now, monotonic=clocks.monotonic
    )
    try:
        assert scheduler.lock_key is None
        acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))  # no raise
    finally:
        scheduler.close()


# -- what the leader writes, and what followers do not ---------------------------------------------


def test_the_leader_writes_redbeats_meta_with_the_nominal_due_time(
    world: RedBeatWorld, clocks: Clocks, sent: Sent
) -> None:
    scheduler, _ = world.scheduler("a", clocks)
    world.entry("pulse")
    saved = world.meta("pulse")  # RedBeat's save() wrote last_run_at = when it was saved
    scheduler.tick()
    assert world.meta("pulse") == saved  # seeing the entry writes nothing; a sent run does
    clocks.advance(0.73)  # late: the run is named, and recorded, by when it was due
    scheduler.tick()
    clocks.advance(0.41)
    scheduler.tick()
    assert sent.occurrences == [pulse(0.5), pulse(1.0)]
    meta = world.meta("pulse")
    assert meta == {"last_run_at": T0 + timedelta(seconds=1.0), "total_run_count": 2}
    entry = RedBeatSchedulerEntry.from_key(world.key("pulse"), app=world.app)
    assert entry.last_run_at == T0 + timedelta(seconds=1.0)
    score = world.client.zscore(f"{world.prefix}:schedule", world.key("pulse"))
    assert score == entry.score  # its place in RedBeat's sorted set follows the run


def test_followers_write_nothing_to_redbeats_keys(
    store_url: str, redis_url: str, clocks: Clocks, sent: Sent
) -> None:
    static = {"static": {"task": TASK, "schedule": 0.5}}
    world = RedBeatWorld(store_url, redis_url, sent, beat_schedule=static)
    try:
        follower, _ = world.scheduler("f", clocks, leading=False)
        ticks(follower, clocks, 4)
        follower.sync()
        assert world.snapshot() == {}  # not even the static entries RedBeat saves at start
        leader, leadership = world.scheduler("a", clocks)
        ticks(leader, clocks, 3)
        assert world.meta("static")["total_run_count"] == 2  # the check sees the leader's writes
        world.entry("pulse")
        leadership.drop()  # the leader becomes a follower; the entries keep falling due
        before = world.snapshot()
        ticks(leader, clocks, 4)
        ticks(follower, clocks, 4)
        leader.sync()
        follower.close()
        assert world.snapshot() == before
        assert sent.occurrences == [pulse(3.0, "static"), pulse(3.5, "static")]
    finally:
        world.close()


def test_redbeats_schedule_types_are_sent_on_their_slots(
    world: RedBeatWorld, clocks: Clocks, sent: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    """A crontab, and an rrule with a count, which sends its last run and then stops."""
    RedBeatSchedulerEntry("cron", TASK, crontab(minute="*"), app=world.app).save()
    three = rrule("SECONDLY", dtstart=T0, interval=20, count=3)  # T0 (the anchor), +20 s, +40 s
    RedBeatSchedulerEntry("rrule", TASK, three, app=world.app).save()
    scheduler, _ = world.scheduler("a", clocks)
    with caplog.at_level(logging.WARNING):
        scheduler.tick()
        ticks(scheduler, clocks, 10, step=10.0)
    assert sent.occurrences == [pulse(20, "rrule"), pulse(40, "rrule"), pulse(60, "cron")]
    assert [r.getMessage() for r in caplog.records] == []
    assert world.meta("rrule") == {"last_run_at": T0 + timedelta(seconds=40), "total_run_count": 2}
    assert world.client.zscore(f"{world.prefix}:schedule", world.key("rrule")) == -1


def test_an_entry_that_ran_under_redbeat_continues_from_its_last_run(
    world: RedBeatWorld, clocks: Clocks, sent: Sent
) -> None:
    """Its meta's ``last_run_at`` is where its schedule goes on (a new one: when it was saved)."""
    world.entry("pulse")
    ran = {"last_run_at": T0 - timedelta(seconds=1.2), "total_run_count": 7}  # as RedBeat writes
    world.client.hset(world.key("pulse"), "meta", json.dumps(ran, cls=RedBeatJSONEncoder))
    scheduler, _ = world.scheduler("a", clocks)
    scheduler.tick()
    ticks(scheduler, clocks, 1)
    assert sent.occurrences == [pulse(-0.2), pulse(0.3)]
    assert sent.calls[0][1]["leaderfeed_coalesced"] == [pulse(-0.7)]
    assert world.meta("pulse")["total_run_count"] == 9


@pytest.mark.parametrize(
    ("policy", "sends", "coalesced"),
    [
        ("run_once", [2.0], [1.0, 1.5]),
        ("skip", [2.0], []),
        ("catch_up", [1.0, 1.5, 2.0], []),
    ],
)
def test_a_new_leader_continues_the_entry_under_each_misfire_policy(
    store_url: str,
    redis_url: str,
    clocks: Clocks,
    sent: Sent,
    policy: str,
    sends: list[float],
    coalesced: list[float],
) -> None:
    world = RedBeatWorld(store_url, redis_url, sent, leaderfeed_misfire_policy=policy)
    try:
        world.entry("pulse")
        old, old_leadership = world.scheduler("old", clocks)
        old.tick()
        ticks(old, clocks, 1)
        old_leadership.drop()  # it died; no leader for three due times
        clocks.advance(1.5)
        new, _ = world.scheduler("new", clocks)
        new.tick()
        ticks(new, clocks, 1)
        assert sent.occurrences == [pulse(t) for t in [0.5, *sends, 2.5]]
        listed = sent.calls[1][1].get("leaderfeed_coalesced", [])
        assert listed == [pulse(t) for t in coalesced]
        last = T0 + timedelta(seconds=2.5)
        assert world.meta("pulse") == {"last_run_at": last, "total_run_count": len(sent.calls)}
    finally:
        world.close()


# -- bad entries -----------------------------------------------------------------------------------


def test_corrupt_entries_are_skipped_with_one_warning_each(
    world: RedBeatWorld, clocks: Clocks, sent: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    world.entry("pulse")
    world.entry("bad-meta")
    world.client.hset(world.key("bad-meta"), "meta", "{not json")
    world.entry("bad-definition")
    world.client.hset(world.key("bad-definition"), "definition", json.dumps({"task": TASK}))
    world.entry("garbled")
    world.client.hset(world.key("garbled"), "definition", "\x00garbled")
    scheduler, _ = world.scheduler("a", clocks)
    with caplog.at_level(logging.WARNING):
        scheduler.tick()
        ticks(scheduler, clocks, 6)
    assert sent.occurrences == [pulse(0.5 * n) for n in range(1, 7)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    for bad in ("bad-meta", "bad-definition", "garbled"):
        naming = [r for r in warnings if world.key(bad) in r.getMessage()]
        assert len(naming) == 1, [r.getMessage() for r in warnings]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]
    assert all(r.exc_info is None for r in warnings)  # one line each, not a traceback


def test_a_repaired_entry_runs_and_a_new_breakage_is_reported_again(
    world: RedBeatWorld, clocks: Clocks, sent: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    world.entry("pulse")
    scheduler, _ = world.scheduler("a", clocks)
    scheduler.tick()
    with caplog.at_level(logging.WARNING):
        world.client.hset(world.key("pulse"), "meta", "{not json")
        ticks(scheduler, clocks, 2)
        world.client.hset(world.key("pulse"), "meta", json.dumps({"last_run_at": None}))
        ticks(scheduler, clocks, 1)
        world.client.hset(world.key("pulse"), "meta", "{not json again")
        ticks(scheduler, clocks, 2)
    naming = [r for r in caplog.records if world.key("pulse") in r.getMessage()]
    assert len(naming) == 2, [r.getMessage() for r in caplog.records]
    # While broken nothing was sent; repaired, it caught up once (run_once) and went on.
    assert len(sent.calls) == 1
    assert sent.calls[0][1]["leaderfeed_coalesced"] == [pulse(0.5), pulse(1.0)]
    assert sent.occurrences == [pulse(1.5)]


def test_an_entry_disabled_at_runtime_stops_being_sent(
    world: RedBeatWorld, clocks: Clocks, sent: Sent
) -> None:
    world.entry("pulse")
    world.entry("other")
    scheduler, _ = world.scheduler("a", clocks)
    scheduler.tick()
    ticks(scheduler, clocks, 2)
    entry = RedBeatSchedulerEntry.from_key(world.key("pulse"), app=world.app)
    entry.enabled = False
    entry.save()
    ticks(scheduler, clocks, 4)
    assert [o for o in sent.occurrences if o.startswith("pulse@")] == [pulse(0.5), pulse(1.0)]
    assert [o for o in sent.occurrences if o.startswith("other@")] == [
        pulse(0.5 * n, "other") for n in range(1, 7)
    ]


# -- RedBeat's Redis unreachable ------------------------------------------------------------------


def test_redbeats_redis_down_during_a_term_stops_sends_until_it_returns(
    store_url: str,
    redis_fault_server: RedisFaultServer,
    clocks: Clocks,
    sent: Sent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RedBeat's Redis is a server of its own, separate from the election's store."""
    world = RedBeatWorld(store_url, redis_fault_server.url, sent)
    server = redis_fault_server.server
    try:
        world.entry("pulse")
        scheduler, _ = world.scheduler("a", clocks)
        scheduler.tick()
        ticks(scheduler, clocks, 2)
        assert sent.occurrences == [pulse(0.5), pulse(1.0)]
        saved = server.snapshot()
        server.stop()
        with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
            for _ in range(4):
                clocks.advance(0.5)
                assert 0 < scheduler.tick() <= HEARTBEAT  # backs off, never sleeps long
            assert len(sent.calls) == 2
            down = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(down) == 1, [r.getMessage() for r in caplog.records]
            assert "RedBeat's Redis" in down[0].getMessage()
            assert "not sending until it works" in down[0].getMessage()
            assert redis_fault_server.server.password not in caplog.text  # type: ignore[operator]
            server.start(saved)
            clocks.advance(0.5)
            scheduler.tick()
        assert sent.occurrences[2:] == [pulse(3.5)]
        assert sent.calls[2][1]["leaderfeed_coalesced"] == [pulse(1.5 + 0.5 * n) for n in range(4)]
        assert "works again" in caplog.text
        assert world.meta("pulse")["last_run_at"] == T0 + timedelta(seconds=3.5)
    finally:
        if server.process is None:
            server.start()
        world.close()


def test_redbeats_redis_down_when_a_term_begins_delays_it_without_sending(
    store_url: str, redis_fault_server: RedisFaultServer, clocks: Clocks, sent: Sent
) -> None:
    world = RedBeatWorld(store_url, redis_fault_server.url, sent)
    server = redis_fault_server.server
    try:
        world.entry("pulse")
        saved = server.snapshot()
        server.stop()
        scheduler, _ = world.scheduler("a", clocks)
        ticks(scheduler, clocks, 3)
        assert sent.calls == []
        server.start(saved)
        scheduler.tick()  # the term begins now: the entry's interval starts here
        ticks(scheduler, clocks, 2)
        assert sent.occurrences == [pulse(2.0), pulse(2.5)]
    finally:
        if server.process is None:
            server.start()
        world.close()


def test_a_hung_redbeat_redis_is_an_outage_given_a_socket_timeout(
    store_url: str,
    redis_fault_server: RedisFaultServer,
    clocks: Clocks,
    sent: Sent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RedBeat's client has no socket timeout unless ``redbeat_redis_options`` gives one: a
    server that stops answering (SIGSTOP) would block the leader's tick until it answers."""
    options = {"socket_timeout": 0.2, "socket_connect_timeout": 0.2}
    world = RedBeatWorld(store_url, redis_fault_server.url, sent, redbeat_redis_options=options)
    process = redis_fault_server.server.process
    assert process is not None
    try:
        world.entry("pulse")
        scheduler, _ = world.scheduler("a", clocks)
        scheduler.tick()
        ticks(scheduler, clocks, 1)
        process.send_signal(signal.SIGSTOP)
        try:
            with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
                for _ in range(2):
                    clocks.advance(0.5)
                    started = time.monotonic()
                    scheduler.tick()
                    assert time.monotonic() - started < 2.0
            assert "RedBeat's Redis" in caplog.text
            assert "TimeoutError" in caplog.text
            assert sent.occurrences == [pulse(0.5)]
        finally:
            process.send_signal(signal.SIGCONT)
        ticks(scheduler, clocks, 1)
        assert sent.occurrences[1:] == [pulse(2.0)]
    finally:
        world.close()
