"""The leader-queue checker finds what it claims to find (synthetic runs, no workers)."""

from __future__ import annotations

from harness.leader_queue_checker import Run, check


def test_a_clean_history_passes() -> None:
    runs = [Run(0, "a", 1, 0.0, 1.0), Run(1, "a", 1, 1.0, 2.0), Run(2, "b", 2, 2.5, 3.0)]
    report = check(range(3), runs)
    assert report.safe and report.exactly_once, report
    assert report.terms == [(1, "a"), (2, "b")]


def test_lost_and_duplicated_arguments_are_counted() -> None:
    runs = [Run(0, "a", 1, 0.0, 1.0), Run(0, "a", 1, 1.0, 2.0)]
    report = check(range(2), runs)
    assert report.lost == [1]
    assert report.duplicated == {0: 2}
    assert report.safe


def test_two_workers_at_once_are_caught() -> None:
    overlapping = [Run(0, "a", 1, 0.0, 1.0), Run(1, "b", 2, 0.5, 1.5)]
    assert len(check(range(2), overlapping).overlaps) == 1
    shared = [Run(0, "a", 1, 0.0, 1.0), Run(1, "b", 1, 2.0, 3.0)]
    assert check(range(2), shared).shared_terms == {1: {"a", "b"}}
    stale = [Run(0, "b", 2, 0.0, 1.0), Run(1, "a", 1, 2.0, 3.0)]  # old term after a newer one
    report = check(range(2), stale)
    assert len(report.out_of_order) == 1 and not report.safe
