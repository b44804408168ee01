"""A store that goes back in time, with real member processes and the independent checker.

Three members of one election on a real redis-server. The store returns to an earlier state
of the record - a restart from a snapshot taken before a leadership change, a vacant record
snapshotted and restored after someone claimed it, a replica promoted after missing the change -
while the member that led in that earlier state may wake up (SIGCONT) before or after.

Each scenario runs ``LEADERFEED_ROLLBACK_TRIALS`` trials (3 by default; 20 in the long run the
issue reports) and the checker must find no overlapping acts and no term with two holders in
any of them.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.helpers import wait_until
from harness.servers.redis_process import RedisServer
from harness.servers.tcp_proxy import TcpProxy
from tests.faults.cluster import HEARTBEAT, HIGH, SLACK, MemberCluster
from tests.fixtures.redis_server import TEST_PASSWORD

pytestmark = pytest.mark.faults

TRIALS = int(os.environ.get("LEADERFEED_ROLLBACK_TRIALS", "3"))
FIRST_LEADER_WITHIN = 10.0


@dataclass
class Endpoint:
    """Where the members connect (what MemberCluster needs of a fault server)."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)


def url_of(port: int) -> str:
    return f"redis://:{TEST_PASSWORD}@127.0.0.1:{port}/0"


def record_of(server: RedisServer, name: str) -> dict[str, Any] | None:
    client = server.client()
    try:
        raw = client.get(f"leaderfeed:{{{name}}}:leader")
    finally:
        client.close()
    return None if raw is None else dict(json.loads(raw))


def pause_leader_across_a_claim(cluster: MemberCluster) -> str:
    """The leader stops (SIGSTOP) past its lease; returns it once another member acted."""
    leader = cluster.leader(FIRST_LEADER_WITHIN)
    stopped_at = time.monotonic()
    cluster.signal(leader, signal.SIGSTOP)
    cluster.wait_for_act_after(stopped_at, HIGH + HEARTBEAT + SLACK, not_by=leader)
    cluster.run_for(2 * HEARTBEAT)
    return leader


def restart_from_before_a_claim(directory: Path, *, resume_before: bool) -> list[str]:
    server = RedisServer(password=TEST_PASSWORD).start()
    cluster = MemberCluster(Endpoint(server.url), directory, size=3)
    try:
        cluster.start_all()
        cluster.leader(FIRST_LEADER_WITHIN)
        cluster.run_for(2 * HEARTBEAT)
        before = server.snapshot()
        leader = pause_leader_across_a_claim(cluster)
        if resume_before:
            cluster.signal(leader, signal.SIGCONT)
            cluster.run_for(HEARTBEAT)
        server.restart_from(before)
        cluster.signal(leader, signal.SIGCONT)
        cluster.run_for(3 * HIGH)
        return cluster.violations()
    finally:
        cluster.close()
        server.close()


def restore_a_vacancy(directory: Path) -> list[str]:
    server = RedisServer(password=TEST_PASSWORD).start()
    cluster = MemberCluster(Endpoint(server.url), directory, size=3)
    try:
        cluster.start_all()
        leader = cluster.leader(FIRST_LEADER_WITHIN)
        others = [member for member in cluster.processes if member != leader]
        for member in others:  # so that nobody claims before the snapshot
            cluster.signal(member, signal.SIGSTOP)
        cluster.signal(leader, signal.SIGTERM)
        cluster.processes[leader].wait(10)
        record = record_of(server, cluster.name)
        assert record is not None and record["holder"] is None, record
        vacant = server.snapshot()
        resumed_at = time.monotonic()
        for member in others:
            cluster.signal(member, signal.SIGCONT)
        cluster.wait_for_act_after(resumed_at, HIGH + SLACK, not_by=leader)
        cluster.run_for(2 * HEARTBEAT)
        server.restart_from(vacant)
        cluster.run_for(3 * HIGH)
        return cluster.violations()
    finally:
        cluster.close()
        server.close()


def promote_a_replica_that_missed_a_claim(directory: Path, *, resume_before: bool) -> list[str]:
    master = RedisServer(password=TEST_PASSWORD).start()
    replica = RedisServer(password=TEST_PASSWORD, replica_of=master.port).start()
    proxy = TcpProxy("127.0.0.1", master.port).start()
    cluster = MemberCluster(Endpoint(url_of(proxy.port)), directory, size=3)
    try:
        cluster.start_all()
        cluster.leader(FIRST_LEADER_WITHIN)
        cluster.run_for(2 * HEARTBEAT)
        wait_until(
            lambda: record_of(replica, cluster.name) is not None, 5, message="the replica synced"
        )
        replica.cut_replication()
        leader = pause_leader_across_a_claim(cluster)
        if resume_before:
            cluster.signal(leader, signal.SIGCONT)
            cluster.run_for(HEARTBEAT)
        master.stop()
        replica.promote()
        proxy.target = ("127.0.0.1", replica.port)
        proxy.drop_connections()
        cluster.signal(leader, signal.SIGCONT)
        cluster.run_for(3 * HIGH)
        return cluster.violations()
    finally:
        cluster.close()
        proxy.close()
        replica.close()
        master.close()


def trials(run: Any, directory: Path) -> Iterator[tuple[int, list[str]]]:
    for trial in range(TRIALS):
        path = directory / f"trial-{trial}"
        path.mkdir()
        yield trial, run(path)


def assert_no_violation(scenario: str, run: Any, directory: Path) -> None:
    found = {trial: v for trial, v in trials(run, directory) if v}
    print(f"\n{scenario}: {TRIALS} trials, {len(found)} with violations")
    for trial, violations in found.items():
        print(f"  trial {trial}: " + "; ".join(violations[:3]))
    assert not found, f"{len(found)} of {TRIALS} trials broke safety: {found}"


@pytest.mark.parametrize("resume_before", [True, False], ids=["resumed-before", "resumed-after"])
def test_redis_restarted_from_a_snapshot_taken_before_a_leadership_change(
    tmp_path: Path, resume_before: bool
) -> None:
    assert_no_violation(
        f"restart from snapshot, leader {'resumed before' if resume_before else 'resumed after'}",
        lambda path: restart_from_before_a_claim(path, resume_before=resume_before),
        tmp_path,
    )


def test_redis_restarted_from_a_snapshot_of_a_vacant_record(tmp_path: Path) -> None:
    assert_no_violation("restored vacancy", restore_a_vacancy, tmp_path)


@pytest.mark.parametrize("resume_before", [True, False], ids=["resumed-before", "resumed-after"])
def test_a_replica_promoted_after_missing_a_leadership_change(
    tmp_path: Path, resume_before: bool
) -> None:
    assert_no_violation(
        f"replica promoted, leader {'resumed before' if resume_before else 'resumed after'}",
        lambda path: promote_a_replica_that_missed_a_claim(path, resume_before=resume_before),
        tmp_path,
    )
