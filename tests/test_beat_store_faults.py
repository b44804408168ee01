"""``LeaderScheduler`` when the store fails it, refuses its claims, or holds a schedule state from
the future: in process, on the memory store, with the scheduler's clocks moved by the test.

Backoff shows in what ``tick()`` returns (Celery's beat sleeps that long before the next tick)
and in how few lines a lasting fault logs. The real-process versions are in
``tests/test_store_errors.py`` and ``tests/test_schedule_state_sanity.py``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
from celery import Celery
from celery.schedules import crontab, schedule

from celery_leaderfeed.backends.memory import memory_store
from celery_leaderfeed.celery.occurrences import EntryState, beyond_schedule
from celery_leaderfeed.celery.scheduler import LeaderScheduler
from celery_leaderfeed.errors import StoreRefused
from tests.beat_support import (
    HEARTBEAT,
    T0,
    Clocks,
    HandLeadership,
    Sent,
    scheduler_for,
    stored,
    tick_id,
)

#: ``refused_pace`` at the test timings (election timeout max 0.9 s): max(5, 4 x 0.9).
REFUSED_PACE = 5.0
#: ``report_interval`` at the test timings: 15 x 0.9 s.
REPORT_EVERY = 13.5


@pytest.fixture
def clocks(store_url: str) -> Clocks:
    clocks = Clocks()
    memory_store(store_url).clock = lambda: clocks.now().timestamp()  # one clock for both
    return clocks


def beat_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == "celery_leaderfeed.beat"
    ]


def run_ticks(scheduler: LeaderScheduler, clocks: Clocks, seconds: float) -> list[float]:
    """Tick as Celery's beat does - sleeping what each tick returns - for ``seconds``."""
    delays: list[float] = []
    end = clocks.mono + seconds
    while clocks.mono < end:
        delays.append(scheduler.tick())
        clocks.advance(max(delays[-1], 0.001))
    return delays


# -- refused claims ------------------------------------------------------------------------------


def test_claims_refused_under_one_term_back_off_and_say_why_once(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The scheduler believes it leads, but the store shows another term: every claim is
    refused. It used to tick again at once, thousands of times a second, a line each."""
    believer = HandLeadership(store_url, "cluster", "believer")
    believer.take()
    other_term = HandLeadership(store_url, "cluster", "other").take()  # believer keeps its term
    stale = scheduler_for(app, believer, clocks, schedulers)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        delays = run_ticks(stale, clocks, 12.0)
    assert sent.calls == []
    assert len(delays) <= 12, delays  # was: unbounded (each tick returned 0)
    assert delays[0] == 0.0  # the first refusal may be a lost race: read again at once
    assert max(delays) <= REFUSED_PACE and sum(d > 1.0 for d in delays) >= 2
    lines = beat_lines(caplog)
    refused = [line for line in lines if "refused" in line[1]]
    assert [level for level, _ in refused] == ["INFO", "ERROR"], lines
    assert f"the store shows term {other_term} of other, not this leader's term" in refused[1][1]
    assert "the same store as its election" in refused[1][1]


def test_refusals_end_when_a_claim_succeeds_and_the_pace_returns(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    believer = HandLeadership(store_url, "cluster", "believer")
    believer.take()
    HandLeadership(store_url, "cluster", "other").take()
    stale = scheduler_for(app, believer, clocks, schedulers)
    run_ticks(stale, clocks, 8.0)
    believer.take()  # the store shows our (new) term again
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        delays = run_ticks(stale, clocks, 3.0)
    assert sent.calls and max(delays[2:]) <= HEARTBEAT
    assert any("works again" in message for _, message in beat_lines(caplog))


# -- a store that refuses the schedule state -----------------------------------------------------


def test_a_refused_schedule_state_is_an_error_at_a_bounded_rate_then_heals(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    beat = scheduler_for(app, leadership, clocks, schedulers)
    assert beat._ledger is not None
    refusal = StoreRefused(
        "key 'k' holds another type of value than leaderfeed keeps there (a hash) at "
        "memory://x: delete that key",
        cause="key 'k' holds another type of value than leaderfeed keeps there (a hash)",
        fix="delete that key",
    )

    def refuse() -> dict[str, str]:
        raise refusal

    read_entries = beat._ledger.store.read_entries
    monkeypatch.setattr(beat._ledger.store, "read_entries", refuse)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        delays = run_ticks(beat, clocks, 30.0)
        errors = [line for line in beat_lines(caplog) if line[0] == "ERROR"]
        assert len(errors) in (2, 3), errors  # at 0 s, then once per 13.5 s with a count
        assert "delete that key" in errors[0][1] and "still failing" in errors[1][1]
        assert len(delays) <= 20 and max(delays) <= REFUSED_PACE  # was: every HEARTBEAT / 4
        monkeypatch.setattr(beat._ledger.store, "read_entries", read_entries)  # fixed in the store
        clocks.advance(1.0)
        run_ticks(beat, clocks, 2.0)
    assert sent.calls
    assert any("the schedule state works again" in line[1] for line in beat_lines(caplog))


# -- a broker that refuses sends ---------------------------------------------------------------


def test_failing_sends_stay_pending_and_are_reported_at_a_bounded_rate(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each failed send used to log a traceback and a warning, every tick, as long as it lasted."""
    leadership = HandLeadership(store_url, "cluster", "a")
    leadership.take()
    beat = scheduler_for(app, leadership, clocks, schedulers)
    beat.tick()
    sent.failing = True
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        run_ticks(beat, clocks, 30.0)
        lines = beat_lines(caplog)
        assert [level for level, _ in lines] == ["ERROR", "ERROR", "ERROR"], lines
        assert "stays pending" in lines[0][1] and "still failing" in lines[1][1]
        assert caplog.records[0].exc_info is not None  # the traceback, once
        state = stored(store_url)["tick"]
        assert state.runs == 1 and state.pending is not None  # one claim, pending throughout
        sent.failing = False
        run_ticks(beat, clocks, 1.0)
    assert sent.calls[0][1]["leaderfeed_occurrence"] == state.pending.occurrence
    assert sent.calls[1][1]["leaderfeed_missed"] >= 25  # run_once: the missed runs coalesced
    assert any("sending periodic tasks works again" in text for _, text in beat_lines(caplog))


# -- schedule state from the future --------------------------------------------------------------


def test_a_state_due_beyond_its_schedule_is_rebuilt_with_one_warning(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A leader whose clock ran an hour ahead wrote the state: without the check the entry
    stayed silent for that hour."""
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    ahead = EntryState(last_due=T0 + timedelta(hours=1), term=term, runs=7, skipped=1)
    assert leadership.backend.write_entry(term, leadership.token, "tick", None, ahead.encode())
    beat = scheduler_for(app, leadership, clocks, schedulers)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed.beat"):
        beat.tick()
        rebuilt = stored(store_url)["tick"]
        assert (rebuilt.last_due, rebuilt.runs, rebuilt.skipped) == (T0, 7, 1)
        clocks.advance(1.0)
        beat.tick()
    assert sent.occurrences == [tick_id(1)]
    warnings = [line for line in beat_lines(caplog) if line[0] == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "stored state of 'tick'" in warnings[0][1] and "3600.0 s ahead" in warnings[0][1]


def test_a_state_less_than_one_period_ahead_is_kept(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    slightly = EntryState(last_due=T0 + timedelta(seconds=0.5), term=term)
    assert leadership.backend.write_entry(term, leadership.token, "tick", None, slightly.encode())
    beat = scheduler_for(app, leadership, clocks, schedulers)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        beat.tick()
        clocks.advance(1.5)
        beat.tick()
    assert sent.occurrences == [tick_id(1.5)]
    assert beat_lines(caplog) == []


def test_when_our_clock_is_the_one_behind_the_state_is_kept_and_we_say_so(
    app: Celery,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    schedulers: list[LeaderScheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store's clock agrees with the state's writer: rebuilding would send again runs the
    other leader already sent, so the entry waits for its due time."""

    def two_hours_ahead() -> float:
        return (clocks.now() + timedelta(hours=2)).timestamp()

    memory_store(store_url).clock = two_hours_ahead
    leadership = HandLeadership(store_url, "cluster", "a")
    term = leadership.take()
    written = EntryState(last_due=T0 + timedelta(hours=1), term=term)
    assert leadership.backend.write_entry(term, leadership.token, "tick", None, written.encode())
    beat = scheduler_for(app, leadership, clocks, schedulers)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        for _ in range(3):
            beat.tick()
            clocks.advance(1.0)
    assert sent.calls == [] and stored(store_url)["tick"] == written
    (warning,) = beat_lines(caplog)
    assert "clock is 7200.0 s behind the store's" in warning[1] and "'tick'" in warning[1]


def test_beyond_schedule_is_one_period_for_intervals_and_the_next_slot_for_crontab(
    app: Celery,
) -> None:
    interval = schedule(timedelta(seconds=1), app=app)
    assert not beyond_schedule(interval, T0 + timedelta(seconds=1), T0)
    assert beyond_schedule(interval, T0 + timedelta(seconds=1.001), T0)
    hourly = crontab(minute=0, app=app)
    now = datetime(2024, 5, 1, 12, 59, 0, tzinfo=T0.tzinfo)
    assert not beyond_schedule(hourly, datetime(2024, 5, 1, 13, 0, tzinfo=T0.tzinfo), now)
    assert beyond_schedule(hourly, datetime(2024, 5, 1, 14, 0, tzinfo=T0.tzinfo), now)
