"""Unit tests of ``LeaderScheduler`` on the in-process store: no worker or beat processes.

Leadership is held by hand (a claim on the memory store's record) so a test can make a
scheduler lead, follow, or believe it still leads after another one took over - the paused
process that wakes up. Sends are captured at ``app.send_task``; one test reads a real message
from kombu's in-memory broker to see the headers arrive.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.utils.imports import load_extension_class_names

from celery_leaderfeed import LeaderFeed
from celery_leaderfeed.backends.memory import memory_store
from celery_leaderfeed.celery.beat_leadership import OwnElection, WorkerElection
from celery_leaderfeed.celery.occurrences import EntryState, occurrence_id, task_id_for
from celery_leaderfeed.celery.scheduler import LeaderScheduler
from celery_leaderfeed.engine.election import Lease, Role
from harness.helpers import wait_until
from tests.beat_support import (
    HEARTBEAT,
    T0,
    Clocks,
    HandLeadership,
    Sent,
    make_app,
    scheduler_for,
    stored,
    tick_id,
)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def test_a_lazy_scheduler_does_no_io() -> None:
    app = make_app("redis://127.0.0.1:1/0")  # nothing listens there
    leadership = HandLeadership("memory://lazy", "cluster", "m")
    scheduler = LeaderScheduler(app, leadership=leadership, lazy=True)
    assert "redis://127.0.0.1:1/0" in scheduler.info
    assert scheduler.tick() <= 1.0  # a lazy instance never leads
    scheduler.close()
    assert leadership.started == 0


def test_a_follower_sends_nothing_and_polls_within_the_heartbeat(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    for _ in range(5):
        assert 0 < scheduler.tick() <= HEARTBEAT
        clocks.advance(1.0)
    assert sent.calls == []
    assert memory_store(store_url).entries("cluster") == {}
    assert leadership.started == 1


def test_close_is_idempotent_and_leaves_the_election_once(
    app: Celery, store_url: str, clocks: Clocks
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    scheduler = LeaderScheduler(
        app, leadership=leadership, clock=clocks.now, monotonic=clocks.monotonic
    )
    scheduler.close()
    scheduler.close()
    assert leadership.closed == 1
    assert scheduler.tick() <= HEARTBEAT


def test_the_beat_alias_resolves_to_this_scheduler() -> None:
    aliases = dict(load_extension_class_names("celery.beat_schedulers"))
    assert aliases["leaderfeed"] == "celery_leaderfeed.beat:LeaderScheduler"


# -- leading -------------------------------------------------------------------------------------


def test_a_leader_anchors_then_sends_each_occurrence_once(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    wake = scheduler.tick()
    assert sent.calls == []  # a new entry starts its interval now, as Celery's beat does
    assert stored(store_url)["tick"].last_due == T0
    assert wake <= HEARTBEAT
    for _ in range(3):
        clocks.advance(0.5)
        scheduler.tick()
        clocks.advance(0.5)
        scheduler.tick()
    assert sent.occurrences == [tick_id(1), tick_id(2), tick_id(3)]
    name, headers = sent.calls[0]
    assert name == "tests.tick"
    assert headers["leaderfeed_term"] == term
    assert headers["leaderfeed_sender"] == "a"
    assert headers["celery_beat_task"] is True
    assert "leaderfeed_coalesced" not in headers
    state = stored(store_url)["tick"]
    assert (state.last_due, state.runs, state.term) == (T0 + timedelta(seconds=3), 3, term)


def test_a_leader_wakes_in_time_for_the_next_due_entry(
    store_url: str, clocks: Clocks, monkeypatch: pytest.MonkeyPatch, schedulers: list[Any]
) -> None:
    app = make_app(
        store_url,
        leaderfeed_heartbeat_interval=5.0,
        leaderfeed_election_timeout_min=15.0,
        leaderfeed_election_timeout_max=20.0,
    )
    monkeypatch.setattr(app, "send_task", Sent())
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler.tick()
    clocks.advance(0.3)
    assert scheduler.tick() == pytest.approx(0.7)


def test_a_new_leader_continues_where_the_old_one_stopped(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    first = HandLeadership(store_url, "cluster", "a")
    first.take()
    old = scheduler_for(app, first, clocks, schedulers)
    old.tick()
    clocks.advance(1.0)
    old.tick()
    first.drop()  # it crashed, say
    second = HandLeadership(store_url, "cluster", "b")
    new_term = second.take()
    new = scheduler_for(app, second, clocks, schedulers)
    clocks.advance(1.0)
    new.tick()
    old.tick()
    assert sent.occurrences == [tick_id(1), tick_id(2)]
    assert sent.calls[1][1]["leaderfeed_term"] == new_term
    assert sent.calls[1][1]["leaderfeed_sender"] == "b"


def test_an_early_term_sends_at_once_but_writes_the_metadata_only_once_its_lease_is_valid(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A claim brought forward by the old holder's session ending (PostgreSQL fast_failover):
    the per-occurrence claims are fenced in the store, so they start at once; the inner
    scheduler's metadata is not, so it waits until the old leader has certainly stopped."""
    first = HandLeadership(store_url, "cluster", "a")
    first.take()
    old = scheduler_for(app, first, clocks, schedulers)
    old.tick()
    first.drop()  # crashed
    early = HandLeadership(store_url, "cluster", "b")
    early.take()
    early.fenced_from = clocks.monotonic()
    early.valid_from = clocks.monotonic() + 1.5
    new = scheduler_for(app, early, clocks, schedulers)
    recorded: list[str] = []
    monkeypatch.setattr(
        new, "record_run", lambda entry, run, state: recorded.append(run.send.isoformat())
    )
    clocks.advance(1.0)
    new.tick()
    assert sent.occurrences == [tick_id(1)]
    assert sent.calls[0][1]["leaderfeed_sender"] == "b"
    assert recorded == []
    clocks.advance(1.0)  # past valid_from
    new.tick()
    assert sent.occurrences == [tick_id(1), tick_id(2)]
    assert recorded == [(T0 + timedelta(seconds=2)).isoformat()]
    # Before fenced_from nothing at all is claimed.
    late = HandLeadership(store_url, "cluster", "c")
    late.take()
    late.fenced_from = late.valid_from = clocks.monotonic() + 5
    waiting = scheduler_for(app, late, clocks, schedulers)
    clocks.advance(1.0)
    waiting.tick()
    assert sent.occurrences == [tick_id(1), tick_id(2)]


def test_a_scheduler_holding_an_old_term_cannot_claim(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    """A paused leader wakes up still believing it leads: the fence refuses its claim."""
    paused = HandLeadership(store_url, "cluster", "paused")
    paused.take()
    stale = scheduler_for(app, paused, clocks, schedulers)
    stale.tick()  # anchors the entry in its term
    successor = HandLeadership(store_url, "cluster", "successor")
    successor.take()  # paused.lease() still names the old term
    clocks.advance(1.0)
    stale.tick()
    assert sent.calls == []
    fresh = scheduler_for(app, successor, clocks, schedulers)
    fresh.tick()
    assert sent.occurrences == [tick_id(1)]
    assert sent.calls[0][1]["leaderfeed_sender"] == "successor"


def test_two_schedulers_racing_for_one_occurrence_send_it_once(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    """Even sharing one term and token (a double start), only one claim can win."""
    leadership = HandLeadership(store_url, "cluster", "twin")
    leadership.take()
    one = scheduler_for(app, leadership, clocks, schedulers)
    two = scheduler_for(app, leadership, clocks, schedulers)
    one.tick()
    two.tick()  # read the same state
    clocks.advance(1.0)
    one.tick()
    two.tick()
    clocks.advance(1.0)
    two.tick()
    one.tick()
    assert sorted(sent.occurrences) == [tick_id(1), tick_id(2)]


def test_a_failed_publish_stays_pending_and_is_retried_under_the_same_task_id(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler.tick()
    clocks.advance(1.0)
    sent.failing = True
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        delay = scheduler.tick()
    assert 0 < delay <= HEARTBEAT  # backs off
    pending = stored(store_url)["tick"].pending
    assert pending is not None and pending.occurrence == tick_id(1)
    assert pending.task_id == task_id_for("cluster", tick_id(1))
    assert "stays pending and is published again" in caplog.text
    sent.failing = False
    clocks.advance(0.1)
    scheduler.tick()
    assert sent.occurrences == [tick_id(1)]
    assert sent.task_ids == [pending.task_id]
    assert "leaderfeed_republished" not in sent.calls[0][1]  # the same leader: not a takeover
    assert stored(store_url)["tick"].pending is None  # confirmed


def test_a_store_outage_stops_sends_until_the_store_returns(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler.tick()
    with memory_store(store_url).outage():
        clocks.advance(1.0)
        assert 0 < scheduler.tick() <= HEARTBEAT
        assert sent.calls == []
    scheduler.tick()
    assert sent.occurrences == [tick_id(1)]


def test_a_tick_starts_no_store_call_past_the_operation_timeout(
    store_url: str, clocks: Clocks, sent: Sent, schedulers: list[Any], monkeypatch: Any
) -> None:
    app = make_app(store_url)
    app.conf.beat_schedule = {
        "tick": {"task": "tests.tick", "schedule": 1.0},
        "tock": {"task": "tests.tick", "schedule": 1.0},
    }
    monkeypatch.setattr(app, "send_task", sent)
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler.tick()
    clocks.advance(1.0)
    real_write = scheduler._ledger.store.write_entry  # type: ignore[union-attr]

    def slow_write(*args: Any) -> bool:
        clocks.mono += HEARTBEAT  # each write uses up the whole budget (operation timeout)
        return real_write(*args)

    monkeypatch.setattr(scheduler._ledger.store, "write_entry", slow_write)
    assert scheduler.tick() == 0.0
    assert len(sent.calls) == 1
    scheduler.tick()
    assert len(sent.calls) == 2


# -- misfires and corrupt state ------------------------------------------------------------------


def run_gap(app: Celery, store_url: str, clocks: Clocks, schedulers: list[LeaderScheduler]) -> None:
    """Lead, send one run, then fall silent for 4.5 s and let a new leader take over."""
    first = HandLeadership(store_url, "cluster", "a")
    first.take()
    old = scheduler_for(app, first, clocks, schedulers)
    old.tick()
    clocks.advance(1.0)
    old.tick()
    first.drop()
    clocks.advance(4.5)
    second = HandLeadership(store_url, "cluster", "b")
    second.take()
    scheduler_for(app, second, clocks, schedulers).tick()


def test_run_once_sends_one_run_listing_the_missed_ones(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[LeaderScheduler]
) -> None:
    run_gap(app, store_url, clocks, schedulers)
    assert sent.occurrences == [tick_id(1), tick_id(5)]
    headers = sent.calls[1][1]
    assert headers["leaderfeed_coalesced"] == [tick_id(2), tick_id(3), tick_id(4)]
    assert headers["leaderfeed_missed"] == 3
    assert headers["leaderfeed_missed_after"] == tick_id(1).split("@")[1]


def test_skip_records_missed_runs_without_sending_them(
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(store_url, leaderfeed_misfire_policy="skip")
    monkeypatch.setattr(app, "send_task", sent)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        run_gap(app, store_url, clocks, schedulers)
    assert sent.occurrences == [tick_id(1), tick_id(5)]
    assert "leaderfeed_coalesced" not in sent.calls[1][1]
    assert stored(store_url)["tick"].skipped == 3
    assert "3 run(s) of 'tick' missed" in caplog.text


def test_catch_up_sends_missed_runs_up_to_the_limit(
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(store_url, leaderfeed_misfire_policy="catch_up", leaderfeed_catch_up_limit=2)
    monkeypatch.setattr(app, "send_task", sent)
    run_gap(app, store_url, clocks, schedulers)
    assert sent.occurrences == [tick_id(1), tick_id(3), tick_id(4), tick_id(5)]
    state = stored(store_url)["tick"]
    assert (state.runs, state.skipped) == (4, 1)


def test_a_corrupt_entry_is_rebuilt_and_the_others_keep_running(
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(store_url)
    app.conf.beat_schedule = {
        "tick": {"task": "tests.tick", "schedule": 1.0},
        "other": {"task": "tests.tick", "schedule": 1.0},
    }
    monkeypatch.setattr(app, "send_task", sent)
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    store = memory_store(store_url)
    assert store.write_entry("cluster", term, leadership.token, "tick", None, "{garbage")
    assert store.write_entry(
        "cluster", term, leadership.token, "other", None, EntryState.anchored(T0, term).encode()
    )
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        scheduler.tick()
    assert "stored state of 'tick' is corrupt" in caplog.text
    assert stored(store_url)["tick"] == EntryState.anchored(T0, term)
    clocks.advance(1.0)
    scheduler.tick()
    assert sorted(sent.occurrences) == [
        occurrence_id("other", T0 + timedelta(seconds=1)),
        tick_id(1),
    ]


def test_an_entry_that_cannot_be_scheduled_does_not_stop_the_others(
    store_url: str, clocks: Clocks, sent: Sent, schedulers: list[Any], monkeypatch: Any
) -> None:
    app = make_app(store_url)
    app.conf.beat_schedule = {
        "tick": {"task": "tests.tick", "schedule": 1.0},
        "broken": {"task": "tests.tick", "schedule": timedelta(0)},
    }
    monkeypatch.setattr(app, "send_task", sent)
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler.tick()
    clocks.advance(1.0)
    scheduler.tick()
    assert sent.occurrences == [tick_id(1)]


def test_an_orphaned_embedded_beat_stops_and_exits(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler._parent_pid = 4242  # as if forked by ``celery worker -B`` from PID 4242
    monkeypatch.setattr("celery_leaderfeed.celery.leader_gated.os.getppid", lambda: 4242)
    scheduler.tick()
    monkeypatch.setattr(
        "celery_leaderfeed.celery.leader_gated.os.getppid", lambda: 1
    )  # the worker died
    clocks.advance(1.0)
    with pytest.raises(SystemExit):
        scheduler.tick()
    assert sent.calls == []
    assert leadership.closed == 1


# -- real pieces: the engine's own election and kombu's in-memory broker ---------------------------


def test_standalone_schedulers_hand_over_without_repeating_a_run(
    store_url: str, sent: Sent, schedulers: list[LeaderScheduler], monkeypatch: Any
) -> None:
    """Two standalone schedulers, each with its own LeaderFeed; the leader closes (resigns)."""
    app = make_app(store_url)
    app.conf.update(
        leaderfeed_heartbeat_interval=0.05,
        leaderfeed_election_timeout_min=0.15,
        leaderfeed_election_timeout_max=0.25,
        beat_schedule={"tick": {"task": "tests.tick", "schedule": 0.1}},
    )
    monkeypatch.setattr(app, "send_task", sent)

    def standalone(member: str) -> LeaderScheduler:
        feed = LeaderFeed(
            store_url,
            name="cluster.beat",
            member_id=member,
            heartbeat_interval=0.05,
            election_timeout_min=0.15,
            election_timeout_max=0.25,
        )
        scheduler = LeaderScheduler(app, leadership=OwnElection(feed))
        schedulers.append(scheduler)
        return scheduler

    one, two = standalone("one"), standalone("two")

    def senders() -> set[str]:
        one.tick()
        two.tick()
        return {headers["leaderfeed_sender"] for _, headers in sent.calls}

    first = wait_until(senders, 5, interval=0.01, message="a first send")
    assert len(first) == 1
    leader, other = (one, two) if first == {"one"} else (two, one)
    leader.close()
    wait_until(lambda: other.tick() is not None and len(senders()) == 2, 5, interval=0.01)
    occurrences = sent.occurrences
    assert len(occurrences) == len(set(occurrences))
    covered = set(occurrences)
    for headers in (h for _, h in sent.calls):
        covered.update(headers.get("leaderfeed_coalesced", []))
    assert len(covered) == len(occurrences) + sum(
        len(h.get("leaderfeed_coalesced", [])) for _, h in sent.calls
    )


def test_headers_reach_the_message_on_a_real_broker(
    store_url: str, clocks: Clocks, schedulers: list[LeaderScheduler]
) -> None:
    app = make_app(store_url)
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    scheduler = scheduler_for(app, leadership, clocks, schedulers)
    scheduler.tick()
    clocks.advance(1.0)
    scheduler.tick()
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(app.conf.task_default_queue)
        message = queue.get(timeout=2)
        message.ack()
        queue.close()
    assert message.headers["task"] == "tests.tick"
    assert message.headers["leaderfeed_occurrence"] == tick_id(1)
    assert message.headers["leaderfeed_term"] == term


def embedded_leader(
    app: Celery, store_url: str, clocks: Clocks, schedulers: list[LeaderScheduler]
) -> LeaderScheduler:
    """The beat of a leading worker -B: it follows the worker's lease, as shared memory shows it."""
    worker = HandLeadership(store_url, "cluster", "worker-a")
    term = worker.take()
    lease = Lease(
        Role.LEADER,
        term,
        worker.token,
        deadline=math.inf,
        leader_id="worker-a",
        member_id="worker-a",
    )
    scheduler = LeaderScheduler(
        app,
        leadership=WorkerElection("cluster", lambda: lease),
        clock=clocks.now,
        monotonic=clocks.monotonic,
    )
    schedulers.append(scheduler)
    return scheduler


def test_an_embedded_beat_reports_a_standalone_beat_leading_beside_it(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two kinds of beat would each send every run: the embedded leader says so, once."""
    embedded = embedded_leader(app, store_url, clocks, schedulers)
    standalone = HandLeadership(store_url, "cluster.beat", "beat@elsewhere:7")
    standalone_term = standalone.take()
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        for _ in range(4):
            embedded.tick()
            assert standalone.backend.renew(standalone_term, standalone.token).ok
            clocks.advance(0.9)  # the watch looks once per election_timeout_max
    reports = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(reports) == 1
    assert "beat@elsewhere:7" in reports[0].getMessage()


def test_an_embedded_beat_alone_reports_nothing(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    schedulers: list[LeaderScheduler],
    sent: Sent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    embedded = embedded_leader(app, store_url, clocks, schedulers)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        for _ in range(4):
            embedded.tick()
            clocks.advance(0.9)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sent.occurrences == [tick_id(1), tick_id(2)]
