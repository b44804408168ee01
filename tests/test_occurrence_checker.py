"""The occurrence checker must flag duplicates, gaps and off-grid ids on synthetic data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from harness.occurrence_checker import Send, check, due_of

START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
HALF = timedelta(seconds=0.5)


def oid(slot: int, *, shift: timedelta = timedelta(0)) -> str:
    return f"pulse@{START + slot * HALF + shift:%Y-%m-%dT%H:%M:%S.%fZ}"


def own(slot: int, sender: str = "w1", term: int = 1) -> Send:
    return Send(oid(slot), (), term, sender)


def test_a_clean_run_with_a_coalesced_gap_passes() -> None:
    sends = [own(0), own(1), Send(oid(4), (oid(2), oid(3)), 2, "w2"), own(5, "w2", 2)]
    report = check(sends, HALF)
    assert report.ok, report.table()
    assert len(report.coverage) == 6
    assert report.summary() == "6 occurrences, 0 duplicated, 0 missed, 0 off the grid"
    assert "coalesced" in report.table()


def test_a_run_sent_twice_is_a_duplicate() -> None:
    report = check([own(0), own(1), own(1, "w2", 2), own(2, "w2", 2)], HALF)
    assert not report.ok
    assert report.duplicates == {oid(1): 2}
    assert "DUPLICATE" in report.table()


def test_a_run_both_sent_and_coalesced_is_a_duplicate() -> None:
    report = check([own(0), own(1), Send(oid(2), (oid(1),), 2, "w2")], HALF)
    assert report.duplicates == {oid(1): 2}


def test_a_run_nobody_covered_is_missing() -> None:
    report = check([own(0), own(1), own(4, "w2", 2)], HALF)
    assert not report.ok
    assert report.missing == [oid(2), oid(3)]
    assert "MISSED" in report.table()


def test_gaps_are_allowed_when_runs_may_be_skipped() -> None:
    report = check([own(0), own(1), own(4, "w2", 2)], HALF, require_complete=False)
    assert report.ok
    assert report.missing == []


def test_an_id_off_the_grid_means_the_leaders_disagreed() -> None:
    report = check([own(0), own(1), Send(oid(2, shift=timedelta(milliseconds=3)))], HALF)
    assert not report.ok
    assert report.off_grid == [oid(2, shift=timedelta(milliseconds=3))]


def test_ids_are_parsed_independently() -> None:
    assert due_of("a@b@2024-05-01T12:00:00.500000Z") == START + HALF
    with pytest.raises(ValueError, match="not an occurrence id"):
        due_of("nothing here")
    assert check([], HALF).ok
