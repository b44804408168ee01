"""PostgreSQL ``fast_failover``: the holder's session ending brings the claim forward, never
the moment the new leader acts.

Three real member processes (``harness/fault_member.py``) with ``fast_failover`` on a private
server, the fault suite's timings (heartbeat 0.2 s, election timeout 0.6-0.9 s) and its
independent checker of the recorded acts. The whole fault suite also runs with
``fast_failover`` (the ``postgresql-fast`` fault server); these tests add what only it has:
which path a failover took, read from the members' logs, and the case the lock cannot see -
a paused leader whose session an operator ended, resumed while its lease still runs.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.backends.postgresql import libpq_url
from harness.helpers import wait_until
from tests.faults.cluster import HIGH, LOW, SLACK, MemberCluster
from tests.fixtures.postgresql_kit import PostgresFaultServer

pytestmark = pytest.mark.faults

#: What a member logs when it claimed because the holder's session ended.
EARLY_CLAIM = "as its holder's session ended"


@pytest.fixture
def cluster(
    postgresql_fast_fault_server: PostgresFaultServer, tmp_path: Path
) -> Iterator[MemberCluster]:
    members = MemberCluster(postgresql_fast_fault_server, tmp_path, size=3)
    yield members
    members.close()


def holder(cluster: MemberCluster) -> str | None:
    store = backend_from_url(cluster.server.url, name=cluster.name, timeout=2.0)
    try:
        store.connect()
        record = store.read().record
        return None if record is None or record.vacant else record.holder
    finally:
        store.close()


def member_log(cluster: MemberCluster, member_id: str) -> str:
    return (cluster.directory / f"{member_id}.log").read_text(errors="replace")


def assert_safe(cluster: MemberCluster) -> None:
    found = cluster.violations()
    assert not found, "\n".join(found) + "\n" + cluster.logs()


def end_sessions_of(server: PostgresFaultServer, pid: int) -> int:
    """``pg_terminate_backend`` every session of process ``pid`` (found by its client ports);
    returns how many, once they are gone."""
    port = psycopg.conninfo.conninfo_to_dict(libpq_url(server.url))["port"]
    ports = [
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and str(c.raddr.port) == str(port)
    ]
    with psycopg.connect(libpq_url(server.url), autocommit=True) as admin:
        backends = [
            row[0]
            for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", [ports]
            ).fetchall()
        ]
        for backend in backends:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend])
        wait_until(
            lambda: (
                not admin.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = ANY(%s)", [backends]
                ).fetchone()
            ),
            10,
            message="the terminated sessions gone",
        )
    return len(backends)


def test_kill_9_of_the_leader_is_claimed_when_its_session_ends(cluster: MemberCluster) -> None:
    cluster.start_all()
    for _ in range(3):
        leader = cluster.leader(10)
        cluster.run_for(HIGH)
        killed_at = time.monotonic()
        cluster.kill(leader)
        successor = cluster.wait_for_act_after(killed_at, LOW + HIGH + SLACK, not_by=leader)
        assert EARLY_CLAIM in member_log(cluster, successor.member), cluster.logs()
        cluster.start(leader)  # back to three members
    cluster.run_for(HIGH)
    assert_safe(cluster)


def test_sigstop_keeps_the_session_so_failover_waits_the_election_timeout(
    cluster: MemberCluster,
) -> None:
    """A paused process keeps its session and its lock: the followers' normal wait decides."""
    cluster.start_all()
    leader = cluster.leader(10)
    cluster.run_for(HIGH)
    paused_at = time.monotonic()
    cluster.signal(leader, signal.SIGSTOP)
    successor = cluster.wait_for_act_after(paused_at, HIGH + LOW + SLACK, not_by=leader)
    cluster.signal(leader, signal.SIGCONT)
    cluster.run_for(HIGH)
    assert EARLY_CLAIM not in member_log(cluster, successor.member), cluster.logs()
    assert_safe(cluster)


@pytest.mark.parametrize("trial", range(3))
def test_a_paused_leader_whose_session_ended_is_outwaited_before_anyone_acts(
    cluster: MemberCluster, trial: int
) -> None:
    """SIGSTOP the leader, end its sessions (as ``pg_terminate_backend``, a pooler or a
    restart would), see a follower claim through the lock, then SIGCONT the leader while its
    lease still runs: it acts until its lease ends, and the checker must see the new leader
    act only after that."""
    del trial
    cluster.start_all()
    leader = cluster.leader(10)
    cluster.run_for(HIGH)
    process = cluster.processes[leader]
    process.send_signal(signal.SIGSTOP)
    try:
        assert end_sessions_of(cluster.server, process.pid) >= 3  # store, feed, lock
        wait_until(
            lambda: holder(cluster) not in (None, leader), LOW, interval=0.005, message="a claim"
        )
    finally:
        process.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    successor = cluster.wait_for_act_after(resumed_at, HIGH + SLACK, not_by=leader)
    assert EARLY_CLAIM in member_log(cluster, successor.member), cluster.logs()
    cluster.run_for(HIGH)
    assert_safe(cluster)
