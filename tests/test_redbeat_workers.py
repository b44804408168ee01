"""Real ``celery worker -B`` and ``celery beat -S leaderfeed-redbeat`` processes.

Three nodes elect a leader (short timings, see :mod:`tests.beat_cluster`); the 0.5 s entry is not
in ``beat_schedule`` but saved into RedBeat's keys by the test, with
``RedBeatSchedulerEntry(...).save()``, once the cluster runs. The never-faulted recorder worker
runs it and :mod:`harness.occurrence_checker` judges the sends (``run_once``: every occurrence
covered exactly once). The two failover tests fault two leaders in turn, so every standby must
reach its beat loop and take over - RedBeat's own lock would park the standbys in
``beat_init`` - and no RedBeat lock key may exist while a cluster runs or after it. One more
test stops RedBeat's Redis under a leading beat, and one runs the plain ``LeaderScheduler`` in
a process that imported RedBeat.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from redbeat.schedulers import RedBeatSchedulerEntry

from celery_leaderfeed.urls import redact_url
from harness.helpers import wait_until
from harness.servers.redis_process import RedisServer
from tests.beat_cluster import PERIOD, BeatCluster, assert_clean, figure, show
from tests.fixtures.redis_server import TEST_PASSWORD, RedisFaultServer
from tests.workers import wait_gone

pytestmark = pytest.mark.celery_workers

NODES = ["a", "b", "c"]


def redbeat_conf(cluster: BeatCluster, redbeat_url: str) -> dict[str, object]:
    """Settings of a cluster whose schedule is RedBeat's, under a key prefix of its own."""
    return {
        "beat_scheduler": "leaderfeed-redbeat",
        "redbeat_redis_url": redbeat_url,
        "redbeat_key_prefix": f"{cluster.name}:",
        "beat_schedule": {},
    }


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[BeatCluster]:
    cluster = BeatCluster(redis_url, tmp_path, scheduler="leaderfeed-redbeat")
    cluster.extra_conf.update(redbeat_conf(cluster, redis_url))
    try:
        yield cluster
    finally:
        cluster.close()


def save_pulse(cluster: BeatCluster) -> None:
    """Create the periodic entry at runtime, as a RedBeat user does from any process."""
    app = Celery("redbeat-client", set_as_current=False)
    app.conf.update({k: v for k, v in cluster.extra_conf.items() if k.startswith("redbeat_")})
    options = {"queue": cluster.pulse_queue}
    RedBeatSchedulerEntry("pulse", "beat_app.pulse", PERIOD, options=options, app=app).save()
    app.redbeat_redis.close()


def lock_keys(cluster: BeatCluster, client: redis.Redis | None = None) -> list[bytes]:
    """RedBeat lock keys on RedBeat's server (by default the session's): the cluster's
    (``<prefix>:lock``, any ``*lock*`` under its prefix) and RedBeat's default
    ``redbeat::lock``."""
    client = client or cluster.redis
    found = list(client.scan_iter(match=f"{cluster.name}:*lock*"))
    return found + [key for key in (b"redbeat::lock",) if client.exists(key)]


def locks_on(server: RedisServer, cluster: BeatCluster) -> list[bytes]:
    """:func:`lock_keys` on a private server."""
    client = server.client()
    try:
        return lock_keys(cluster, client)
    finally:
        client.close()


def new_holder(cluster: BeatCluster, *gone: str, beat: bool = False) -> str:
    store = cluster.beat_store if beat else cluster.store

    def elected() -> str | None:
        holder = cluster.holder(store)[0]
        return holder if holder is not None and holder not in gone else None

    return wait_until(elected, 10, interval=0.01, message=f"a holder other than {gone}")


def assert_no_password_logged(cluster: BeatCluster) -> None:
    for node, process in cluster.processes.items():
        assert TEST_PASSWORD not in process.log(), f"the Redis password is in {node}'s log"


# -- worker -B ------------------------------------------------------------------------------------


def test_worker_b_kill_9_then_sigstop_of_the_leader(cluster: BeatCluster) -> None:
    """kill -9 of the first leader, then SIGSTOP of the second past its lease, then SIGCONT."""
    cluster.start_workers(NODES)
    save_pulse(cluster)
    nodes = {cluster.hostname(node): node for node in NODES}
    first = cluster.hostname(cluster.wait_leader_sending(NODES))
    assert lock_keys(cluster) == []
    orphan = cluster.beat_pid(nodes[first])
    killed_at = time.time()
    cluster.processes[nodes[first]].kill()
    second = new_holder(cluster, first)
    cluster.wait_more_runs(3, sender=second)
    figure("redbeat worker -B crash failover (3 runs by the new leader)", time.time() - killed_at)
    wait_gone(orphan, 10)  # the orphaned beat child noticed and exited
    group = cluster.processes[nodes[second]].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        third = new_holder(cluster, first, second)
        cluster.wait_more_runs(3, sender=third)
    finally:
        os.killpg(group, signal.SIGCONT)
    cluster.wait_more_runs(2, sender=third)
    assert lock_keys(cluster) == []
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("redbeat worker -B: kill -9, then SIGSTOP/SIGCONT", report)
    senders = {send.sender for sends in report.coverage.values() for send in sends}
    assert senders == {first, second, third}  # every standby reached its beat loop and sent
    assert len(report.coverage) >= 11
    for node in NODES:
        assert "beat: leading in term" in cluster.processes[node].log()
    assert lock_keys(cluster) == []
    assert_no_password_logged(cluster)


# -- standalone beat -------------------------------------------------------------------------------


def test_standalone_beats_sigterm_then_kill_9_of_the_leader(cluster: BeatCluster) -> None:
    beats = ["beat1", "beat2", "beat3"]
    cluster.start_workers([], beat=False)  # the recorder alone
    cluster.start_beats(beats)
    save_pulse(cluster)
    by_pid = {cluster.processes[node].pid: node for node in beats}

    def node_of(member: str) -> str:
        return by_pid[int(member.rsplit(":", 1)[1])]

    def leading_beat() -> str | None:
        holder = cluster.holder(cluster.beat_store)[0]
        runs = [run for run in cluster.runs() if run["sender"] == holder]
        return holder if holder and len(runs) >= 3 else None

    first = wait_until(leading_beat, 20, interval=0.02, message="a beat leading and sending")
    assert lock_keys(cluster) == []
    stopped_at = time.time()
    cluster.processes[node_of(first)].send(signal.SIGTERM)
    second = new_holder(cluster, first, beat=True)
    cluster.wait_more_runs(3, sender=second)
    figure("redbeat standalone handover (3 runs by the new leader)", time.time() - stopped_at)
    assert cluster.processes[node_of(first)].process.wait(30) == 0
    cluster.processes[node_of(second)].kill()
    third = new_holder(cluster, first, second, beat=True)
    cluster.wait_more_runs(3, sender=third)
    assert lock_keys(cluster) == []
    report = cluster.settled_report()
    assert_clean(report, cluster)
    show("redbeat standalone beat: SIGTERM, then kill -9", report)
    senders = {send.sender for sends in report.coverage.values() for send in sends}
    assert senders == {first, second, third}  # every standby reached its beat loop and sent
    assert len(report.coverage) >= 9
    for node in beats:
        assert "beat: leading in term" in cluster.processes[node].log()
    assert lock_keys(cluster) == []
    assert_no_password_logged(cluster)


def test_redbeats_redis_down_during_a_term_stops_sends_until_it_returns(
    redis_url: str, redis_fault_server: RedisFaultServer, tmp_path: Path
) -> None:
    """RedBeat's keys on a server of their own, stopped and restarted (from a snapshot, so the
    entry survives) while the election's store keeps working."""
    cluster = BeatCluster(redis_url, tmp_path, scheduler="leaderfeed-redbeat")
    cluster.extra_conf.update(redbeat_conf(cluster, redis_fault_server.url))
    server = redis_fault_server.server
    try:
        cluster.start_workers([], beat=False)
        cluster.start_beats(["beat1"])
        beat = cluster.processes["beat1"]
        save_pulse(cluster)
        cluster.wait_more_runs(3)
        assert locks_on(server, cluster) == []
        saved = server.snapshot()
        stopped_at = time.time()
        server.stop()
        down = f"RedBeat's Redis ({redact_url(redis_fault_server.url)}), listing the entries"
        wait_until(lambda: down in beat.log(), 10, interval=0.02, message="the outage logged")
        logged_at = time.time()
        # Hold the outage over three due times, then bring the server back.
        wait_until(lambda: time.time() >= stopped_at + 3 * PERIOD, 5, interval=0.05)
        restarting_at = time.time()  # the beat may send as soon as the server answers
        server.start(saved)
        cluster.wait_more_runs(3)
        assert "not sending until it works" in beat.log()
        wait_until(lambda: "works again" in beat.log(), 5, interval=0.05)
        runs = cluster.runs()
        assert [r for r in runs if logged_at < r["sent_at"] < restarting_at] == []
        first_back = next(r for r in runs if r["sent_at"] > restarting_at)
        assert first_back["coalesced"], "the first send after the outage lists the missed runs"
        report = cluster.settled_report()
        assert_clean(report, cluster)
        show("redbeat Redis stopped and restarted", report)
        assert beat.log().count(down) == 1  # one line for the outage, not one per tick
        assert_no_password_logged(cluster)
        assert locks_on(server, cluster) == []
    finally:
        if server.process is None:
            server.start()
        cluster.close()


# -- RedBeat imported beside the plain LeaderScheduler ---------------------------------------------


def test_importing_redbeat_beside_the_plain_leader_scheduler_logs_no_error(
    redis_url: str, tmp_path: Path
) -> None:
    """RedBeat's module-level beat_init handler reads ``scheduler.lock_key`` in every beat."""
    cluster = BeatCluster(
        redis_url, tmp_path, app="tests.celery_apps.redbeat_app", scheduler="leaderfeed"
    )
    try:
        cluster.start_beats(["beat1"])
        beat = cluster.processes["beat1"]
        wait_until(
            lambda: beat.log().count("beat: sending pulse@") >= 2,
            20,
            interval=0.05,
            message="the beat sending",
        )
        assert beat.terminate() == 0
        log = beat.log()
        assert "scheduler -> celery_leaderfeed.celery.scheduler.LeaderScheduler" in log
        for sign in ("ERROR", "CRITICAL", "Traceback", "Signal handler"):
            assert sign not in log, log[-3000:]
        assert lock_keys(cluster) == []
    finally:
        cluster.close()
