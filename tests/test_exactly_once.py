"""Claim, publish, confirm; takeover republishes; consumers run a republished run once.

In process, on the memory backend: the beat half with hand-taken leadership and a recording
``send_task`` (``tests/beat_support.py``), the consumer half through Celery's own tracer
(``celery.app.trace.trace_task``, what a worker runs for each message) on an app that
``install(app)`` set up. A leader "dies" at :meth:`LeaderGatedMixin.fault_point` by raising
an exception nothing in the scheduler catches, so the store holds what a killed process left.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from celery import Celery
from celery.canvas import Signature
from celery.states import IGNORED, SUCCESS

from celery_leaderfeed import leader_only
from celery_leaderfeed.backends.memory import memory_store
from celery_leaderfeed.celery.occurrences import EntryState, PendingPublish, task_id_for
from celery_leaderfeed.celery.once import once_key
from celery_leaderfeed.celery.scheduler import LeaderScheduler
from celery_leaderfeed.testing import Leadership
from tests.beat_support import (
    Clocks,
    HandLeadership,
    Sent,
    stored,
    tick_id,
)
from tests.celery_apps.memory_app import make_app as make_consumer_app


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


class Died(BaseException):
    """What a killed leader does at a fault point: nothing after it runs."""


class Mortal(LeaderScheduler):
    """A scheduler that dies at one fault point, once."""

    dies_at: str | None = None

    def fault_point(self, where: str, occurrence: str) -> None:
        if where == self.dies_at:
            self.dies_at = None
            raise Died(where)


def mortal(app: Celery, leadership: HandLeadership, clocks: Clocks, made: list[Any]) -> Mortal:
    scheduler = Mortal(app, leadership=leadership, clock=clocks.now, monotonic=clocks.monotonic)
    made.append(scheduler)
    return scheduler


# -- the beat: claim, publish, confirm ------------------------------------------------------------


def test_a_send_is_claimed_pending_published_under_its_task_id_then_confirmed(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[Any]
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    beat = mortal(app, leadership, clocks, schedulers)
    beat.tick()
    clocks.advance(1.0)
    writes_before = len(memory_store(store_url).operations)
    beat.tick()
    assert sent.occurrences == [tick_id(1)]
    assert sent.task_ids == [task_id_for("cluster", tick_id(1))]
    headers = sent.calls[0][1]
    assert headers["leaderfeed_election"] == "cluster"
    assert uuid.UUID(headers["leaderfeed_publish_id"])
    assert "leaderfeed_republished" not in headers
    state = stored(store_url)["tick"]
    assert state.pending is None and state.runs == 1
    new_ops = [op for _, op in memory_store(store_url).operations[writes_before:]]
    assert new_ops.count("write_entry") == 2  # the claim, then the confirmation


def test_the_task_id_is_the_same_on_every_leader_and_differs_per_election() -> None:
    occurrence = "tick@2024-05-01T12:00:01.000000Z"
    assert task_id_for("cluster", occurrence) == task_id_for("cluster", occurrence)
    assert task_id_for("cluster", occurrence) != task_id_for("other", occurrence)
    assert uuid.UUID(task_id_for("cluster", occurrence)).version == 5


@pytest.mark.parametrize("dies_at", ["claimed", "published"])
def test_a_leader_dead_before_confirming_is_republished_by_the_next_one_first(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[Any],
    caplog: pytest.LogCaptureFixture,
    dies_at: str,
) -> None:
    first = HandLeadership(store_url, "cluster", "a")
    old_term = first.take()
    beat = mortal(app, first, clocks, schedulers)
    beat.tick()
    clocks.advance(1.0)
    beat.dies_at = dies_at
    with pytest.raises(Died):
        beat.tick()
    pending = stored(store_url)["tick"].pending
    assert pending is not None and pending.occurrence == tick_id(1) and pending.term == old_term
    published_before = len(sent.calls)
    assert published_before == (1 if dies_at == "published" else 0)

    second = HandLeadership(store_url, "cluster", "b")
    new_term = second.take()
    assert new_term > old_term
    successor = mortal(app, second, clocks, schedulers)
    clocks.advance(1.0)  # tick@2 is due as well: the republish goes first
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        successor.tick()
    republish = sent.calls[published_before]
    assert republish[1]["leaderfeed_occurrence"] == tick_id(1)
    assert republish[1]["leaderfeed_republished"] == old_term
    assert republish[1]["leaderfeed_term"] == new_term
    assert sent.task_ids[published_before] == pending.task_id
    if dies_at == "published":  # a new publish attempt: consumers tell the two apart by it
        assert sent.calls[0][1]["leaderfeed_publish_id"] != republish[1]["leaderfeed_publish_id"]
    assert sent.occurrences[published_before + 1 :] == [tick_id(2)]
    assert stored(store_url)["tick"].pending is None
    assert "publishing tick@" in caplog.text and "again" in caplog.text


def test_a_paused_leader_cannot_confirm_or_republish_after_a_takeover(
    app: Celery, store_url: str, clocks: Clocks, sent: Sent, schedulers: list[Any]
) -> None:
    first = HandLeadership(store_url, "cluster", "a")
    first.take()
    beat = mortal(app, first, clocks, schedulers)
    beat.tick()
    clocks.advance(1.0)
    beat.dies_at = "published"
    with pytest.raises(Died):
        beat.tick()
    second = HandLeadership(store_url, "cluster", "b")
    second.take()
    mortal(app, second, clocks, schedulers).tick()
    calls = len(sent.calls)
    beat.tick()  # the old leader wakes with its old lease: every fenced write is refused
    assert len(sent.calls) == calls


def test_v1_states_still_decode_and_v2_round_trips() -> None:
    v1 = '{"due":1714564800000000,"runs":3,"sent_at":null,"skipped":1,"term":7,"v":1}'
    state = EntryState.decode(v1)
    assert (state.runs, state.skipped, state.term, state.pending) == (3, 1, 7, None)
    pending = PendingPublish(tick_id(1), task_id_for("cluster", tick_id(1)), 7, 2, state.last_due)
    with_pending = EntryState(state.last_due, 7, 3, 1, None, pending)
    assert EntryState.decode(with_pending.encode()) == with_pending
    assert json.loads(with_pending.encode())["v"] == 2


@pytest.mark.parametrize(
    "bad_pending",
    [
        "nonsense",
        {"occurrence": "no-at-sign", "task_id": str(uuid.uuid4()), "term": 1, "attempt": 1},
        {"occurrence": "tick@2024-05-01T12:00:01.000000Z", "task_id": "x", "term": 1},
        {"occurrence": "tick@2024-05-01T12:00:01.000000Z", "task_id": str(uuid.uuid4())},
    ],
)
def test_a_corrupt_pending_record_is_rebuilt_with_a_warning_and_published_once(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[Any],
    caplog: pytest.LogCaptureFixture,
    bad_pending: Any,
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    beat = mortal(app, leadership, clocks, schedulers)
    beat.tick()
    clocks.advance(1.0)
    beat.dies_at = "claimed"
    with pytest.raises(Died):
        beat.tick()
    raw = memory_store(store_url).entries("cluster")["tick"]
    data = json.loads(raw)
    data["pending"] = bad_pending
    assert leadership.backend.write_entry(term, leadership.token, "tick", raw, json.dumps(data))
    clocks.advance(0.1)
    fresh = mortal(app, leadership, clocks, schedulers)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        fresh.tick()
        fresh.tick()
    assert "corrupt pending publish" in caplog.text
    assert sent.occurrences == [tick_id(1)]  # rebuilt as the run due at last_due, sent once
    assert sent.task_ids == [task_id_for("cluster", tick_id(1))]
    state = stored(store_url)["tick"]
    assert state.pending is None and state.runs == 1


# -- the consumer: one execution per run ---------------------------------------------------------


@pytest.fixture
def consumer(redis_url: str) -> Celery:
    app = make_consumer_app(redis_url, leaderfeed_dedup_window=60.0)
    app.conf.task_ignore_result = True
    return app


def traced_state(task: Any, publish_id: str | None, **extra: Any) -> str:
    _, info, _, _ = task.__trace__(
        task_id_for("beat-election", "pulse@x"),
        (),
        {},
        _request(publish_id, **extra),
    )
    return SUCCESS if info is None else str(info.state)


def _request(publish_id: str | None, **extra: Any) -> dict[str, Any]:
    headers: dict[str, Any] = {
        "leaderfeed_occurrence": "pulse@x",
        "leaderfeed_election": "beat-election",
        **extra,
    }
    if publish_id is not None:
        headers["leaderfeed_publish_id"] = publish_id
    return {
        "id": task_id_for("beat-election", "pulse@x"),
        "headers": headers,
        "delivery_info": {"routing_key": "q", "exchange": ""},
        **headers,
    }


def run(task: Any, publish_id: str | None, **extra: Any) -> str:
    """One delivery through Celery's tracer, as a worker runs it: the tracer's state."""
    from celery.app.trace import build_tracer

    if task.__trace__ is None:
        task.__trace__ = build_tracer(task.name, task, app=task.app, eager=False, propagate=False)
    return traced_state(task, publish_id, **extra)


def test_a_duplicate_publish_does_not_run_but_a_redelivery_does(
    consumer: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    bodies: list[str] = []

    @consumer.task(name="pulse", shared=False)
    def pulse() -> None:
        bodies.append("ran")

    consumer.finalize()
    assert run(pulse, "first") == SUCCESS
    assert run(pulse, "first") == SUCCESS  # the broker's own redelivery: runs as Celery intends
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed"):
        assert run(pulse, "second", leaderfeed_republished=3) == IGNORED
    assert bodies == ["ran", "ran"]
    assert "a duplicate publish" in caplog.text and "republished from term 3" in caplog.text
    store = memory_store(str(consumer.conf.leaderfeed_backend))
    assert store.mark_once("beat-election", once_key("pulse@x"), "probe", 1.0) == "first"


def test_a_republish_that_arrives_first_runs_and_the_original_does_not(consumer: Celery) -> None:
    bodies: list[str] = []

    @consumer.task(name="pulse", shared=False)
    def pulse() -> None:
        bodies.append("ran")

    consumer.finalize()
    assert run(pulse, "republish", leaderfeed_republished=2) == SUCCESS
    assert run(pulse, "original") == IGNORED
    assert bodies == ["ran"]


def test_messages_not_sent_by_the_leader_gated_beat_are_not_checked(consumer: Celery) -> None:
    bodies: list[str] = []

    @consumer.task(name="pulse", shared=False)
    def pulse() -> None:
        bodies.append("ran")

    consumer.finalize()
    assert run(pulse, None) == SUCCESS
    assert run(pulse, None) == SUCCESS
    pulse.apply()  # eager: never checked
    assert bodies == ["ran", "ran", "ran"]


def test_the_tasks_own_before_start_still_runs_after_the_check(consumer: Celery) -> None:
    seen: list[str] = []

    class Own(consumer.Task):  # type: ignore[misc, name-defined]
        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            seen.append("own before_start")

    @consumer.task(name="pulse", base=Own, shared=False)
    def pulse() -> None:
        seen.append("body")

    consumer.finalize()
    assert run(pulse, "one") == SUCCESS
    assert run(pulse, "two") == IGNORED
    assert seen == ["own before_start", "body"]


def test_the_dedup_store_unreachable_delays_the_run_never_runs_it_unchecked(
    consumer: Celery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bodies: list[str] = []
    republished: list[dict[str, Any]] = []

    @consumer.task(name="pulse", shared=False)
    def pulse() -> None:
        bodies.append("ran")

    def record(self: Signature, *args: Any, **options: Any) -> None:
        republished.append({**self.options, **options})

    monkeypatch.setattr(Signature, "apply_async", record)
    consumer.finalize()
    store = memory_store(str(consumer.conf.leaderfeed_backend))
    with store.outage(), caplog.at_level(logging.WARNING, logger="celery_leaderfeed"):
        assert run(pulse, "first") == IGNORED
    assert bodies == []
    assert "cannot reach the store" in caplog.text
    (again,) = republished
    assert again["headers"]["leaderfeed_publish_id"] == "first"  # the same publish, later
    assert again["countdown"] > 0
    assert again["task_id"] == task_id_for("beat-election", "pulse@x")
    assert run(pulse, "first") == SUCCESS  # the store is back: it runs once
    assert bodies == ["ran"]


def test_a_periodic_leader_only_task_is_checked_once_admitted(
    consumer: Celery, leaderfeed_leader: Leadership
) -> None:
    bodies: list[str] = []

    @consumer.task(name="leader_pulse", shared=False)
    @leader_only
    def leader_pulse() -> None:
        bodies.append("ran")

    consumer.finalize()
    assert run(leader_pulse, "first") == SUCCESS
    assert run(leader_pulse, "first") == SUCCESS
    assert run(leader_pulse, "second") == IGNORED
    assert bodies == ["ran", "ran"]


def test_the_dedup_window_is_a_setting(redis_url: str) -> None:
    from celery_leaderfeed.celery.settings import resolve_settings
    from celery_leaderfeed.errors import ConfigurationError

    assert resolve_settings(make_consumer_app(redis_url)).dedup_window == 7 * 24 * 3600
    with pytest.raises(ConfigurationError, match="leaderfeed_dedup_window"):
        resolve_settings(make_consumer_app(redis_url, leaderfeed_dedup_window=0))


def test_tasks_a_worker_imports_after_finalizing_the_app_are_checked_too(consumer: Celery) -> None:
    """A worker finalizes its app, then imports its ``include`` modules: ``worker_init``."""
    from celery.signals import worker_init

    consumer.finalize()
    bodies: list[str] = []

    @consumer.task(name="late", shared=False)
    def late() -> None:
        bodies.append("ran")

    class Worker:
        app = consumer

    worker_init.send(sender=Worker())
    assert run(late, "one") == SUCCESS
    assert run(late, "two") == IGNORED
    assert bodies == ["ran"]
