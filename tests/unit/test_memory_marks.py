"""The memory store's once-only marks: its own clock, outages, and a rollback that forgets.

The contract suite checks marks on every backend; this covers what only the reference store
can show: expiry on an injected clock, and snapshot()/restore() taking marks back in time.
"""

from __future__ import annotations

import pytest

from celery_leaderfeed import BackendUnavailable
from celery_leaderfeed.backends.memory import MemoryBackend, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def backend(store: MemoryStore, name: str = "marks") -> MemoryBackend:
    member = MemoryBackend("memory://", name=name, options={"store": store})
    member.connect()
    return member


def test_a_mark_expires_exactly_at_its_ttl_on_the_store_clock() -> None:
    clock = Clock()
    member = backend(MemoryStore(clock))
    assert member.mark_once("k", "first", 10) is None
    clock.now += 9.999
    assert member.mark_once("k", "second", 10) == "first"
    clock.now += 0.001
    assert member.mark_once("k", "third", 10) is None
    assert member.mark_once("k", "fourth", 10) == "third"


def test_a_rollback_forgets_marks_made_after_the_snapshot() -> None:
    store = MemoryStore()
    member = backend(store)
    assert member.mark_once("before", "a", 60) is None
    state = store.snapshot()
    assert member.mark_once("after", "b", 60) is None
    store.restore(state)
    assert member.mark_once("before", "x", 60) == "a"  # kept
    assert member.mark_once("after", "y", 60) is None  # forgotten: marked again


def test_marks_fail_during_an_outage_and_record_the_operation() -> None:
    store = MemoryStore()
    member = backend(store)
    with store.outage(), pytest.raises(BackendUnavailable):
        member.mark_once("k", "v", 60)
    assert member.mark_once("k", "v", 60) is None
    assert store.operations[-1] == ("marks", "mark_once")
