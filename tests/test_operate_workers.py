"""Operating real workers: ``celery leaderfeed elect``, ``check`` and "standing down".

Real ``celery worker`` processes of ``tests.celery_apps.leader_tasks`` on the session Redis
(broker and store), each test its own election; the commands run as a user runs them, as
subprocesses. Each worker's main process records an act every millisecond its lease lets it act
as leader (``LEADERFEED_TEST_ACTS``), and the independent checker
(:mod:`harness.fault_checker`) reads those acts: no two workers act at overlapping times, no
term has two holders.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from celery_leaderfeed.celery.health import Health
from celery_leaderfeed.celery.occurrences import EntryState
from harness.fault_checker import load_acts, violations
from harness.helpers import wait_until
from harness.servers.redis_process import RedisServer
from tests.test_worker_leadership import APP, HEARTBEAT, Cluster
from tests.workers import REPO

pytestmark = pytest.mark.celery_workers

NODES = ("w1", "w2", "w3")


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(redis_url, tmp_path)
    try:
        yield group
    finally:
        group.close()


def celery(cluster: Cluster, *args: str, **conf: object) -> subprocess.CompletedProcess[str]:
    """``celery -A APP leaderfeed ARGS`` with the cluster's settings, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "leaderfeed", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **cluster.env(**conf)},
        check=False,
    )


def acts_of(directory: Path) -> list:  # type: ignore[type-arg]
    return [act for path in sorted(directory.glob("*.acts")) for act in load_acts(path)]


@pytest.fixture
def acts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "acts"
    directory.mkdir()
    monkeypatch.setenv("LEADERFEED_TEST_ACTS", str(directory))  # inherited by the workers
    return directory


# -- elect ----------------------------------------------------------------------------------------


def test_elect_moves_leadership_to_the_named_worker_with_no_overlap(
    cluster: Cluster, acts_dir: Path
) -> None:
    cluster.start(NODES, pool="solo")
    leader, term = cluster.wait_leader(NODES)
    moves = []
    for _ in range(4):
        target = NODES[(NODES.index(leader) + 1) % len(NODES)]
        wait_until((acts_dir / f"{cluster.hostname(leader)}.acts").exists, 10)
        asked = time.monotonic()
        result = celery(cluster, "elect", cluster.hostname(target))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{cluster.hostname(target)} leads election")
        assert f"was {cluster.hostname(leader)}" in result.stdout
        holder, new_term = cluster.holder()
        assert (holder, new_term is not None and new_term > term) == (
            cluster.hostname(target),
            True,
        )
        moves.append((asked, target, new_term))
        print(result.stdout.strip())  # the time it took, for the record (-s)
        leader, term = target, new_term
    cluster.wait_role(leader, "leader")

    def acted_in_last_term() -> bool:
        return any(act.term == term for act in acts_of(acts_dir))

    wait_until(acted_in_last_term, 10, message="the last elected node acted")
    acts = acts_of(acts_dir)
    assert violations(acts) == []
    for asked, target, new_term in moves:  # each named node acted under the term it got
        mine = [act for act in acts if act.term == new_term]
        assert mine and {act.member for act in mine} == {cluster.hostname(target)}
        assert min(act.at for act in mine) > asked


def test_elect_waits_for_the_leaders_running_leader_only_bodies(
    cluster: Cluster, acts_dir: Path
) -> None:
    cluster.start(("w1", "w2"), pool="threads", concurrency=2)
    leader, term = cluster.wait_leader(("w1", "w2"))
    target = "w2" if leader == "w1" else "w1"
    body = 5 * HEARTBEAT  # far longer than the engine's resign hook may wait
    cluster.send("leader_work", leader, "long", body)
    wait_until(lambda: cluster.runs(label="long", event="start"), 15)
    result = celery(cluster, "elect", cluster.hostname(target))
    assert result.returncode == 0, result.stderr
    (ended,) = cluster.runs(label="long", event="end")
    holder, new_term = cluster.holder()
    assert holder == cluster.hostname(target) and new_term is not None and new_term > term
    cluster.wait_role(target, "leader")
    wait_until(lambda: any(act.term == new_term for act in acts_of(acts_dir)), 10)
    acts = acts_of(acts_dir)
    assert violations(acts) == []
    first = min(act.at for act in acts if act.term == new_term)
    assert first > ended["at"]  # the new leader acted only once the old one's body had ended
    old_acts = [act.at for act in acts if act.term == term]
    started = cluster.runs(label="long", event="start")[0]["at"]
    assert max(old_acts) < started + body  # it stopped acting (admitting) first


def test_elect_to_an_unknown_or_dead_node_names_it_and_changes_nothing(
    cluster: Cluster, acts_dir: Path
) -> None:
    cluster.start(("w1", "w2"), pool="solo")
    leader, term = cluster.wait_leader(("w1", "w2"))
    follower = "w2" if leader == "w1" else "w1"

    unknown = f"nobody.{cluster.name}@localhost"
    result = celery(cluster, "elect", unknown)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert unknown in result.stderr and "leadership unchanged" in result.stderr
    assert cluster.hostname(leader) in result.stderr  # the members that did answer
    assert cluster.holder() == (cluster.hostname(leader), term)

    cluster.workers[follower].kill()  # dead: it cannot answer, so it is never nominated
    result = celery(cluster, "elect", cluster.hostname(follower))
    assert result.returncode == 1
    assert cluster.hostname(follower) in result.stderr and result.stderr.count("\n") == 1
    assert "leadership unchanged" in result.stderr
    # Nothing was written: no nominee that could never claim, the same term.
    record = cluster.store.read().record
    assert record is not None and record.nominee is None
    assert cluster.holder() == (cluster.hostname(leader), term)
    assert violations(acts_of(acts_dir)) == []


# -- standing down --------------------------------------------------------------------------------


def test_inspect_shows_standing_down_while_a_warm_shutdown_waits_for_leader_only_bodies(
    cluster: Cluster,
) -> None:
    cluster.start(("w1", "w2"), pool="threads", concurrency=2)
    leader, _ = cluster.wait_leader(("w1", "w2"))
    other = "w2" if leader == "w1" else "w1"
    cluster.send("leader_work", leader, "long", 4.0)
    wait_until(lambda: cluster.runs(label="long", event="start"), 15)
    cluster.workers[leader].send(signal.SIGTERM)
    stopping_since = time.monotonic()

    def standing_down() -> dict[str, object] | None:
        report = cluster.broadcast("leaderfeed", [leader]).get(cluster.hostname(leader))
        return report if report and report.get("role") == "standing down" else None

    report = wait_until(standing_down, 10, interval=0.05, message="standing down shown")
    # Still answering well into the wait, after Celery's own remote control stopped.
    while time.monotonic() - stopping_since < 1.5:
        report = wait_until(standing_down, 10, interval=0.05, message="still standing down")
    assert report["standing_down"] is True and report["leader"] == cluster.hostname(leader)
    assert cluster.holder()[0] == cluster.hostname(leader)  # it still holds the record
    assert not cluster.runs(label="long", event="end")
    cluster.wait_leader((other,), timeout=20)  # once the body ended it resigned
    assert cluster.runs(label="long", event="end")


# -- check ---------------------------------------------------------------------------------------


def test_check_exit_codes_against_real_workers_and_store(cluster: Cluster, redis_url: str) -> None:
    schedule = {"tick": {"task": f"{APP}.plain", "schedule": 1.0, "args": ["x"]}}
    assert celery(cluster, "check").returncode == Health.NO_LEADER  # no member ever ran

    cluster.start(("w1",), pool="solo")
    leader, term = cluster.wait_leader(("w1",))
    ok = celery(cluster, "check")
    assert ok.returncode == Health.OK, ok.stdout + ok.stderr
    assert (
        ok.stdout
        == f"ok: {cluster.hostname(leader)} leads election {cluster.name!r} (term {term})\n"
    )

    # An entry the leader last handled 10 periods ago: overdue past 2 periods, not past 20.
    record = cluster.store.read().record
    assert record is not None and record.token is not None
    stale = EntryState(last_due=datetime.now(timezone.utc) - timedelta(seconds=10), term=term)
    assert cluster.store.write_entry(term, record.token, "tick", None, stale.encode())
    late = celery(cluster, "check", "--overdue-periods", "2", beat_schedule=schedule)
    assert late.returncode == Health.OVERDUE, late.stdout + late.stderr
    assert late.stdout.startswith("overdue: entry 'tick' was due at ")
    assert (
        celery(cluster, "check", "--overdue-periods", "20", beat_schedule=schedule).returncode == 0
    )
    shown = json.loads(celery(cluster, "status", "--json", beat_schedule=schedule).stdout)
    assert shown["entries"]["tick"]["state"] == "on_time"  # status judges nothing
    assert 8 < shown["entries"]["tick"]["late_periods"] < 12

    cluster.workers["w1"].terminate()  # no member running: it resigned
    vacant = celery(cluster, "check")
    assert vacant.returncode == Health.NO_LEADER
    assert vacant.stdout.startswith("no valid leader: ") and vacant.stdout.count("\n") == 1


def test_check_answers_within_its_bound_when_the_store_stops_answering(
    cluster: Cluster,
) -> None:
    store = RedisServer().start()
    try:
        url = store.url  # a store of its own: the broker stays up
        cluster.start(("w1",), pool="solo", leaderfeed_backend=url)
        conf = {"leaderfeed_backend": url}
        wait_until(lambda: celery(cluster, "check", **conf).returncode == 0, 15)
        assert store.process is not None
        store.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            began = time.monotonic()
            result = celery(cluster, "check", **conf)  # bound: the operation timeout, 0.2 s
            elapsed = time.monotonic() - began
        finally:
            store.process.send_signal(signal.SIGCONT)
        assert result.returncode == Health.STORE_UNREACHABLE, result.stdout + result.stderr
        assert result.stdout.startswith("store unreachable: ") and result.stdout.count("\n") == 1
        baseline = time.monotonic()
        assert celery(cluster, "check", **conf).returncode == Health.OK
        startup = time.monotonic() - baseline  # the interpreter and Celery importing
        assert elapsed < startup + HEARTBEAT + 0.3, (elapsed, startup)
        store.stop()
        gone = celery(cluster, "check", **conf)
        assert gone.returncode == Health.STORE_UNREACHABLE
    finally:
        store.stop()
