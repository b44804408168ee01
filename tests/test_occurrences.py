"""Unit tests of the beat's pure logic: due times, occurrence ids, misfire plans, stored state."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

from celery_leaderfeed.celery import occurrences
from celery_leaderfeed.celery.occurrences import (
    MAX_LISTED,
    CorruptState,
    EntryState,
    Pending,
    PlannedRun,
    ScheduleError,
    from_micros,
    next_due,
    occurrence_id,
    parse_occurrence_id,
    pending,
    plan,
    send_headers,
    to_micros,
)

T0 = datetime(2024, 5, 1, 12, 7, 30, tzinfo=timezone.utc)


@pytest.fixture
def app() -> Celery:
    return Celery("occurrences-tests", set_as_current=False)


def every(seconds: float, app: Celery) -> schedule:
    return schedule(timedelta(seconds=seconds), app=app)


def cron(app: Celery, **fields: str) -> crontab:
    spec = crontab(**fields)
    spec.app = app
    return spec


# -- time and ids ------------------------------------------------------------------------------


def test_micros_round_trip_is_exact() -> None:
    moment = datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    assert from_micros(to_micros(moment)) == moment
    with pytest.raises(ValueError, match="naive"):
        to_micros(datetime(2024, 1, 1))


def test_occurrence_ids_are_fixed_width_and_parse_back() -> None:
    due = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone.utc)
    assert occurrence_id("tick", due) == "tick@2024-05-01T12:00:00.500000Z"
    assert parse_occurrence_id("a@b@2024-05-01T12:00:00.500000Z") == ("a@b", due)
    paris = due.astimezone(timezone(timedelta(hours=2)))
    assert occurrence_id("tick", paris) == occurrence_id("tick", due)
    with pytest.raises(ValueError, match="not an occurrence id"):
        parse_occurrence_id("no-separator")


# -- next_due ----------------------------------------------------------------------------------


def test_interval_due_times_are_exact_microseconds(app: Celery) -> None:
    third = schedule(timedelta(microseconds=333_333), app=app)
    due = T0
    for _ in range(3000):
        due = next_due(third, due)
    assert due == T0 + timedelta(microseconds=3000 * 333_333)


def test_crontab_due_times_are_the_cron_slots(app: Celery) -> None:
    quarter = cron(app, minute="*/15")
    first = next_due(quarter, T0)
    assert first == datetime(2024, 5, 1, 12, 15, tzinfo=timezone.utc)
    assert next_due(quarter, first) == datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)


def test_crontab_slots_follow_the_app_timezone(app: Celery) -> None:
    app.conf.timezone = "Europe/Paris"
    nightly = cron(app, hour="2", minute="30")
    # 02:30 in Paris is 00:30 UTC in summer time.
    assert next_due(nightly, T0) == datetime(2024, 5, 2, 0, 30, tzinfo=timezone.utc)


def test_due_times_do_not_depend_on_when_they_are_asked(app: Celery) -> None:
    relative = schedule(timedelta(minutes=5), relative=True, app=app)
    quarter = cron(app, minute="*/15")
    for spec in (relative, quarter):
        answers = set()
        for offset in (0, 3600, 86400 * 30):
            spec.nowfun = lambda offset=offset: T0 + timedelta(seconds=offset)
            answers.add(next_due(spec, T0))
        assert len(answers) == 1, spec


def test_an_interval_of_zero_cannot_name_a_next_run(app: Celery) -> None:
    with pytest.raises(ScheduleError):
        next_due(schedule(timedelta(0), app=app), T0)


# -- pending -----------------------------------------------------------------------------------


def test_nothing_pending_before_the_next_due_time(app: Celery) -> None:
    assert pending(every(10, app), T0, T0 + timedelta(seconds=9.999), keep=5) is None
    found = pending(every(10, app), T0, T0 + timedelta(seconds=10), keep=5)
    assert found == Pending(T0 + timedelta(seconds=10), (T0 + timedelta(seconds=10),), 1)


def test_pending_interval_counts_and_keeps_the_most_recent(app: Celery) -> None:
    found = pending(every(0.5, app), T0, T0 + timedelta(seconds=2.2), keep=3)
    assert found is not None
    assert found.count == 4
    assert found.first == T0 + timedelta(seconds=0.5)
    assert found.recent == tuple(T0 + timedelta(seconds=s) for s in (1.0, 1.5, 2.0))


def test_pending_interval_handles_huge_gaps_by_arithmetic(app: Celery) -> None:
    started = time.monotonic()
    found = pending(every(0.5, app), T0, T0 + timedelta(days=365), keep=2)
    assert time.monotonic() - started < 0.1
    assert found is not None
    assert found.count == 2 * 86400 * 365
    assert found.latest == T0 + timedelta(days=365)


def test_pending_crontab_walks_the_slots(app: Celery) -> None:
    found = pending(cron(app, minute="*/15"), T0, T0 + timedelta(hours=1), keep=2)
    assert found is not None
    assert found.count == 4
    assert found.first == datetime(2024, 5, 1, 12, 15, tzinfo=timezone.utc)
    assert found.recent == (
        datetime(2024, 5, 1, 12, 45, tzinfo=timezone.utc),
        datetime(2024, 5, 1, 13, 0, tzinfo=timezone.utc),
    )


def test_long_walked_backlogs_come_in_chunks(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(occurrences, "SCAN_LIMIT", 3)
    every_minute = cron(app, minute="*")
    found = pending(every_minute, T0, T0 + timedelta(minutes=10), keep=10)
    assert found is not None
    assert found.count == 3
    assert found.latest == datetime(2024, 5, 1, 12, 10, tzinfo=timezone.utc)
    rest = pending(every_minute, found.latest, T0 + timedelta(minutes=10), keep=10)
    assert rest is not None and rest.first == datetime(2024, 5, 1, 12, 11, tzinfo=timezone.utc)


# -- plans -------------------------------------------------------------------------------------


def gap(count: int, app: Celery, keep: int = MAX_LISTED + 1) -> Pending:
    found = pending(every(1, app), T0, T0 + timedelta(seconds=count), keep=keep)
    assert found is not None and found.count == count
    return found


@pytest.mark.parametrize("policy", ["run_once", "skip", "catch_up"])
def test_a_single_due_run_is_simply_sent(policy: str, app: Celery) -> None:
    steps = plan(gap(1, app), T0, policy, catch_up_limit=10)
    due = T0 + timedelta(seconds=1)
    assert steps == [PlannedRun(advance_to=due, send=due)]


def test_run_once_sends_the_latest_and_lists_every_missed_run(app: Celery) -> None:
    (step,) = plan(gap(4, app), T0, "run_once", catch_up_limit=10)
    assert step.send == step.advance_to == T0 + timedelta(seconds=4)
    assert step.coalesced == tuple(T0 + timedelta(seconds=s) for s in (1, 2, 3))
    assert step.coalesced_count == 3
    assert step.skipped == 0
    assert step.missed_after == T0


def test_run_once_lists_at_most_max_listed_but_counts_all(app: Celery) -> None:
    (step,) = plan(gap(MAX_LISTED + 50, app), T0, "run_once", catch_up_limit=10)
    assert len(step.coalesced) == MAX_LISTED
    assert step.coalesced[-1] == T0 + timedelta(seconds=MAX_LISTED + 49)
    assert step.coalesced_count == MAX_LISTED + 49


def test_skip_records_the_missed_runs_and_sends_the_latest(app: Celery) -> None:
    (step,) = plan(gap(4, app), T0, "skip", catch_up_limit=10)
    assert step.send == T0 + timedelta(seconds=4)
    assert step.skipped == 3
    assert step.skipped_from == T0 + timedelta(seconds=1)
    assert step.coalesced == () and step.coalesced_count == 0


def test_catch_up_sends_each_missed_run_within_the_limit(app: Celery) -> None:
    steps = plan(gap(4, app), T0, "catch_up", catch_up_limit=10)
    assert [step.send for step in steps] == [T0 + timedelta(seconds=s) for s in (1, 2, 3, 4)]
    assert [step.advance_to for step in steps] == [step.send for step in steps]
    assert sum(step.skipped for step in steps) == 0


def test_catch_up_beyond_the_limit_skips_the_oldest(app: Celery) -> None:
    steps = plan(gap(10, app), T0, "catch_up", catch_up_limit=3)
    assert [step.send for step in steps] == [T0 + timedelta(seconds=s) for s in (7, 8, 9, 10)]
    assert steps[0].skipped == 6
    assert steps[0].skipped_from == T0 + timedelta(seconds=1)
    assert sum(step.skipped for step in steps) == 6


def test_an_unknown_policy_is_refused(app: Celery) -> None:
    with pytest.raises(ValueError, match="unknown misfire policy"):
        plan(gap(2, app), T0, "whenever", catch_up_limit=3)


def test_headers_name_the_occurrence_term_sender_and_coalesced_runs(app: Celery) -> None:
    (step,) = plan(gap(3, app), T0, "run_once", catch_up_limit=10)
    headers = send_headers("tick", step, term=7, sender="w1@host", sent_at=1.5)
    assert headers == {
        "leaderfeed_term": 7,
        "leaderfeed_occurrence": "tick@2024-05-01T12:07:33.000000Z",
        "leaderfeed_due": "2024-05-01T12:07:33.000000Z",
        "leaderfeed_sender": "w1@host",
        "leaderfeed_sent_at": 1.5,
        "leaderfeed_coalesced": [
            "tick@2024-05-01T12:07:31.000000Z",
            "tick@2024-05-01T12:07:32.000000Z",
        ],
        "leaderfeed_missed": 2,
        "leaderfeed_missed_after": "2024-05-01T12:07:30.000000Z",
    }
    json.dumps(headers)  # must travel in any serializer


def test_two_leaders_continuing_from_the_stored_state_name_the_same_runs(app: Celery) -> None:
    """Leader A handles runs until it dies; leader B resumes from what A stored, later."""
    spec = every(0.5, app)
    state = EntryState.anchored(T0, term=1)
    sent: list[datetime] = []
    for now_s, term in ((0.5, 1), (1.0, 1), (1.5, 1), (4.2, 2), (4.5, 2)):
        found = pending(spec, state.last_due, T0 + timedelta(seconds=now_s), keep=MAX_LISTED + 1)
        assert found is not None
        for step in plan(found, state.last_due, "run_once", catch_up_limit=10):
            sent.extend((*step.coalesced, step.send) if step.send else step.coalesced)
            state = EntryState.decode(state.after(step, term=term, sent_at=0.0).encode())
    grid = [T0 + timedelta(seconds=0.5 * k) for k in range(1, 10)]
    assert sent == grid


# -- stored state ------------------------------------------------------------------------------


def test_state_round_trips_and_advances() -> None:
    state = EntryState.anchored(T0, term=3)
    assert EntryState.decode(state.encode()) == state
    step = PlannedRun(
        advance_to=T0 + timedelta(seconds=5), send=T0 + timedelta(seconds=5), skipped=2
    )
    moved = state.after(step, term=4, sent_at=12.5)
    assert (moved.last_due, moved.term, moved.runs, moved.skipped, moved.sent_at) == (
        T0 + timedelta(seconds=5),
        4,
        1,
        2,
        12.5,
    )
    assert EntryState.decode(moved.encode()) == moved
    quiet = moved.after(
        PlannedRun(advance_to=T0 + timedelta(seconds=9), skipped=1), term=4, sent_at=99
    )
    assert (quiet.runs, quiet.skipped, quiet.sent_at) == (1, 3, 12.5)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{not json",
        "[]",
        '"text"',
        '{"v": 3, "due": 1, "term": 1, "runs": 0, "skipped": 0}',
        '{"due": 1, "term": 1, "runs": 0, "skipped": 0}',
        '{"v": 1, "term": 1, "runs": 0, "skipped": 0}',
        '{"v": 1, "due": "1", "term": 1, "runs": 0, "skipped": 0}',
        '{"v": 1, "due": 1, "term": 0, "runs": 0, "skipped": 0}',
        '{"v": 1, "due": 1, "term": true, "runs": 0, "skipped": 0}',
        '{"v": 1, "due": -5, "term": 1, "runs": 0, "skipped": 0}',
        '{"v": 1, "due": 1, "term": 1, "runs": 1.5, "skipped": 0}',
        '{"v": 1, "due": 1, "term": 1, "runs": 0, "skipped": 0, "sent_at": "x"}',
        '{"v": 1, "due": 1, "term": 1, "runs": 0, "skipped": 0, "sent_at": NaN}',
        '{"v": 1, "due": 99999999999999999999999, "term": 1, "runs": 0, "skipped": 0}',
    ],
)
def test_corrupt_states_are_refused(raw: str) -> None:
    with pytest.raises(CorruptState):
        EntryState.decode(raw)
