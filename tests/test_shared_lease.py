"""The lease segment's admission lock, across real processes and threads.

A warm shutdown marks the lease follower and waits until no admitted leader-only body runs
(``SharedLease.wait_admitted``); bodies hold the lock shared (``admission()``). Holders here are
forked processes and threads; ordering is checked with ``time.monotonic()`` stamps, one clock
for every process on the machine.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_leaderfeed.celery.shared_lease import SharedLease
from celery_leaderfeed.engine.election import Lease, Role
from harness.helpers import wait_until

DEADLINE = 10.0
fork = multiprocessing.get_context("fork")


def hold_admission(election: str, owner: int, held: Any, release: Any, stamp: Any) -> None:
    """Child: take the admission lock, say so, wait to be told, stamp the time, let go."""
    attached = SharedLease.attach(election, owner)
    assert attached is not None
    with attached.admission() as admitted:
        assert admitted
        held.set()
        release.wait(DEADLINE)
        stamp.value = time.monotonic()


def start_holder(election: str) -> tuple[Any, Any, Any, Any]:
    """A forked child holding this process's admission lock: (process, held, release, stamp)."""
    held, release = fork.Event(), fork.Event()
    stamp = fork.Value("d", 0.0)
    child = fork.Process(target=hold_admission, args=(election, os.getpid(), held, release, stamp))
    child.start()
    return child, held, release, stamp


@pytest.fixture
def named_segment() -> Iterator[tuple[SharedLease, str]]:
    election = f"admission-{uuid.uuid4().hex[:8]}"
    lease = SharedLease.create(election, "worker@test")
    try:
        yield lease, election
    finally:
        lease.close()


def test_the_lease_reads_back_as_written_and_only_from_its_writer(
    named_segment: tuple[SharedLease, str],
) -> None:
    segment, election = named_segment
    lease = Lease(Role.LEADER, 7, "f" * 32, 105.5, 100.25, 101.0, "w1@host", "worker@test")
    segment.write(lease)
    reader = SharedLease.attach(election, os.getpid())
    assert reader is not None
    assert reader.read(os.getpid()) == lease
    assert reader.read(os.getpid() + 1) is None  # a child whose parent is no longer the writer
    early = dataclasses.replace(lease, fenced_from=100.5)  # fenced before valid (fast failover)
    segment.write(early)
    assert reader.read(os.getpid()) == early
    segment.revoke("worker@test")
    assert reader.read(os.getpid()) == Lease(Role.FOLLOWER, member_id="worker@test")
    reader.close()
    assert reader.read(os.getpid()) is None


def test_nothing_admitted_means_no_wait(named_segment: tuple[SharedLease, str]) -> None:
    segment, _ = named_segment
    waited: list[bool] = []
    segment.wait_admitted(on_wait=lambda: waited.append(True))
    assert waited == []


def test_a_handover_waits_for_a_body_admitted_in_another_process(
    named_segment: tuple[SharedLease, str],
) -> None:
    segment, election = named_segment
    child, held, release, stamp = start_holder(election)
    try:
        assert held.wait(DEADLINE)
        segment.wait_admitted(on_wait=release.set)  # lets the child go only once we wait
        returned_at = time.monotonic()
        assert release.is_set(), "wait_admitted did not notice the lock was held"
        assert 0 < stamp.value <= returned_at
    finally:
        release.set()
        child.join(DEADLINE)
    assert child.exitcode == 0


def test_a_holder_killed_with_sigkill_releases_the_lock(
    named_segment: tuple[SharedLease, str],
) -> None:
    segment, election = named_segment
    child, held, _never_released, stamp = start_holder(election)
    assert held.wait(DEADLINE)
    waited: list[bool] = []
    done = threading.Event()

    def waiter() -> None:
        segment.wait_admitted(on_wait=lambda: waited.append(True))
        done.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    wait_until(lambda: waited, DEADLINE, message="the handover is waiting")
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(DEADLINE)
    assert done.wait(DEADLINE), "the lock of a killed holder was never released"
    assert stamp.value == 0.0  # the child never reached its release


def test_threads_of_one_process_exclude_each_other(
    named_segment: tuple[SharedLease, str],
) -> None:
    # The threads pool runs bodies in the worker's own process, beside the handover.
    segment, _ = named_segment
    held, release = threading.Event(), threading.Event()
    released_at: list[float] = []

    def body() -> None:
        with segment.admission() as admitted:
            assert admitted
            held.set()
            release.wait(DEADLINE)
            released_at.append(time.monotonic())

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    assert held.wait(DEADLINE)
    segment.wait_admitted(on_wait=release.set)
    returned_at = time.monotonic()
    thread.join(DEADLINE)
    assert release.is_set() and released_at and released_at[0] <= returned_at


def test_a_removed_segment_admits_nothing() -> None:
    election = f"admission-{uuid.uuid4().hex[:8]}"
    owner = SharedLease.create(election, "worker@test")
    reader = SharedLease.attach(election, os.getpid())
    assert reader is not None
    owner.close()  # the worker stopped: its segment file is gone
    with reader.admission() as admitted:
        assert admitted is False
    reader.close()
