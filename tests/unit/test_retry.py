"""Backoff and the fault log: pure logic on a fake clock."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest

from celery_leaderfeed.engine.retry import Backoff, FaultLog, refused_pace, report_interval
from celery_leaderfeed.errors import BackendUnavailable, StoreRefused
from celery_leaderfeed.timing import Timing

REFUSED = StoreRefused(
    "the store refused the password for user 'default' at redis://:***@h:6379/0: check it",
    cause="the store refused the password for user 'default'",
    fix="check it",
)
OUTAGE = BackendUnavailable("read failed on redis://h:6379/0: ConnectionError: refused")


def test_the_report_interval_and_refused_pace_are_a_minute_and_16_s_by_default() -> None:
    assert report_interval(Timing()) == 60.0
    assert refused_pace(Timing()) == 16.0
    fast = Timing(heartbeat_interval=0.2, election_timeout_min=0.6, election_timeout_max=0.9)
    assert (report_interval(fast), refused_pace(fast)) == (pytest.approx(13.5), 5.0)


def test_backoff_doubles_to_its_cap_and_refusals_to_a_slower_one() -> None:
    backoff = Backoff(random.Random(1), 0.25, 1.0, refused_cap=16.0)
    delays = [backoff.next(OUTAGE) for _ in range(6)]
    assert 0.125 <= delays[0] <= 0.25
    assert all(0.5 <= delay <= 1.0 for delay in delays[2:])
    refused = [backoff.next(REFUSED) for _ in range(4)]
    assert refused[-1] >= 8.0 and max(refused) <= 16.0
    backoff.reset()
    assert backoff.next(REFUSED) <= 0.25


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[tuple[str, str]]:
        return [(record.levelname, record.getMessage()) for record in self.records]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    log = logging.getLogger("tests.retry")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)


def test_a_refusal_is_an_error_once_then_once_per_interval_with_a_count(
    records: Records,
) -> None:
    faults = FaultLog(logging.getLogger("tests.retry"), "leaderfeed 'x'", every=60.0)
    for second in range(0, 150, 5):  # an attempt every 5 s for 2.5 minutes
        faults.failed(float(second), "joining the election", REFUSED)
    lines = records.lines()
    assert [level for level, _ in lines] == ["ERROR", "ERROR", "ERROR"]
    assert lines[0][1] == f"leaderfeed 'x': joining the election failed: {REFUSED}"
    assert "12 more failed attempt(s) in the last 60 s (13 since it began 60 s ago)" in lines[1][1]
    assert "check it" in lines[1][1] and "check it" in lines[2][1]
    assert faults.current == f"joining the election failed: {REFUSED}"

    faults.recovered(151.0, "the store")
    assert records.lines()[-1] == (
        "INFO",
        "leaderfeed 'x': the store works again, after 30 failed attempt(s) over 151.0 s",
    )
    assert faults.current is None
    faults.recovered(152.0, "the store")  # nothing more to say
    assert len(records.lines()) == 4


def test_an_outage_is_a_warning_and_another_fault_is_reported_at_once(
    records: Records,
) -> None:
    faults = FaultLog(logging.getLogger("tests.retry"), "beat", every=60.0)
    faults.failed(0.0, "the schedule state", OUTAGE, note="; not sending until it works")
    faults.failed(1.0, "the schedule state", OUTAGE)
    faults.failed(2.0, "the schedule state", REFUSED)  # a new cause: said at once
    faults.failed(3.0, "the schedule state", OUTAGE)  # back and forth: already said
    assert records.lines() == [
        ("WARNING", f"beat: the schedule state failed: {OUTAGE}; not sending until it works"),
        ("ERROR", f"beat: the schedule state failed: {REFUSED}"),
    ]


def test_a_bug_is_an_error_with_its_traceback(records: Records) -> None:
    faults = FaultLog(logging.getLogger("tests.retry"), "leaderfeed 'x'", every=60.0)
    try:
        raise KeyError("oops")
    except KeyError as exc:
        faults.failed(0.0, "the engine", exc)
        faults.failed(0.1, "the engine", exc)
    (record,) = records.records
    assert record.levelname == "ERROR" and record.exc_info is not None
