"""Prometheus metrics of real workers and standalone beats, scraped over HTTP.

Workers of ``tests.celery_apps.leader_tasks`` (prefork and threads) and ``celery beat -S
leaderfeed`` processes of ``tests.celery_apps.beat_app`` on the session Redis, each serving
``--leaderfeed-metrics-port``. Through each failover the test watches the store for the change
and then scrapes: ``leaderfeed_is_leader`` must flip within one heartbeat (plus the time a
scrape takes) of the store showing it, and the counters must move as they should.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.helpers import free_port, wait_until
from tests.beat_cluster import BeatCluster
from tests.test_operate_workers import celery
from tests.test_worker_leadership import HEARTBEAT, Cluster
from tests.workers import REPO, CeleryProcess

pytestmark = pytest.mark.celery_workers

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``http://127.0.0.1:PORT/metrics``, by name and labels (sorted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample ``name`` whose labels include ``labels`` (None: none)."""
    found = [
        sample
        for (sample_name, sample_labels), sample in samples.items()
        if sample_name == name and labels.items() <= dict(sample_labels).items()
    ]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


def scrape_time(port: int, times: int = 5) -> float:
    """The longest of a few scrapes: what a deadline adds for the scrape itself."""
    longest = 0.0
    for _ in range(times):
        started = time.monotonic()
        scrape(port)
        longest = max(longest, time.monotonic() - started)
    return longest


def wait_changed(read: Callable[[], Any], before: Any, timeout: float) -> float:
    """Poll ``read()`` until it differs from ``before``; the monotonic time of the read that
    first saw the change begin (the change happened before it returned)."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        if read() != before:
            return started
        assert started < deadline, f"no change from {before!r} within {timeout:g} s"
        time.sleep(0.002)


def flips_within(port: int, expected: float, changed: float, budget: float, **labels: str) -> None:
    """Scrape until ``leaderfeed_is_leader`` is ``expected``; fails past ``changed + budget``
    (monotonic). Prints how long after ``changed`` it was seen (``pytest -s``)."""
    while True:
        samples = scrape(port)
        seen = time.monotonic()
        if value(samples, "leaderfeed_is_leader", **labels) == expected:
            print(
                f"\n[leaderfeed metrics] is_leader {expected:g} seen {seen - changed:.3f} s after "
                f"the store showed the change (budget {budget:.3f} s)"
            )
            return
        assert seen < changed + budget, f"is_leader of :{port} not {expected} in time: {samples}"
        time.sleep(0.002)


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path) -> Iterator[Cluster]:
    group = Cluster(redis_url, tmp_path)
    try:
        yield group
    finally:
        group.close()


def start_worker(
    cluster: Cluster, node: str, port: int, pool: str, *extra: str, **conf: Any
) -> CeleryProcess:
    [process] = cluster.start([node], "--leaderfeed-metrics-port", str(port), *extra, pool=pool)
    return process


def member(cluster: Cluster, samples: Samples, node: str, name: str) -> float:
    found = value(samples, name, election=cluster.name, member=cluster.hostname(node))
    assert found is not None, (name, node, samples)
    return found


# -- workers --------------------------------------------------------------------------------------

FAILOVERS = [
    pytest.param("prefork", "elect", id="prefork-elect"),
    pytest.param("threads", "elect", id="threads-elect"),
    pytest.param("prefork", "kill", id="prefork-kill9"),
]


@pytest.mark.parametrize(("pool", "how"), FAILOVERS)
def test_worker_metrics_follow_a_failover(cluster: Cluster, pool: str, how: str) -> None:
    nodes = ("w1", "w2")
    ports = {node: free_port() for node in nodes}
    for node in nodes:
        start_worker(cluster, node, ports[node], pool)
    leader, term = cluster.wait_leader(nodes)
    follower = next(node for node in nodes if node != leader)
    before = {node: scrape(ports[node]) for node in nodes}
    assert member(cluster, before[leader], leader, "leaderfeed_is_leader") == 1
    assert member(cluster, before[follower], follower, "leaderfeed_is_leader") == 0
    assert member(cluster, before[leader], leader, "leaderfeed_term") == term
    assert member(cluster, before[follower], follower, "leaderfeed_term") == term
    remaining = member(cluster, before[leader], leader, "leaderfeed_lease_remaining_seconds")
    assert 0 < remaining <= 0.6
    assert member(cluster, before[follower], follower, "leaderfeed_lease_remaining_seconds") == 0
    assert member(cluster, before[leader], leader, "leaderfeed_claims_won_total") >= 1
    assert member(cluster, before[leader], leader, "leaderfeed_feed_events_total") >= 1

    # Leader-only bodies: run on the leader, skipped on the follower (policy skip), counted
    # from the prefork children (or the threads) into the worker's figures.
    for _ in range(3):
        cluster.send("leader_work", leader, "on-leader").get(timeout=15)
        cluster.send("leader_work", follower, "on-follower")

    def counted() -> tuple[float, float] | None:
        admitted = member(
            cluster, scrape(ports[leader]), leader, "leaderfeed_leader_only_admitted_total"
        )
        skipped = member(
            cluster, scrape(ports[follower]), follower, "leaderfeed_leader_only_skipped_total"
        )
        return (admitted, skipped) if (admitted, skipped) == (3, 3) else None

    wait_until(counted, 15, interval=0.05, message="3 admitted on the leader, 3 skipped")
    assert (
        member(cluster, scrape(ports[leader]), leader, "leaderfeed_leader_only_skipped_total") == 0
    )

    # The same figures in `celery inspect leaderfeed`.
    report = cluster.broadcast("leaderfeed", [leader])[cluster.hostname(leader)]
    assert report["metrics"]["leader_only_admitted"] == 3
    assert report["metrics"]["is_leader"] is True

    # The failover: is_leader flips within one heartbeat of the store showing it.
    budget = HEARTBEAT + max(scrape_time(ports[follower]), scrape_time(ports[leader]))
    holder = cluster.hostname(leader)
    if how == "elect":
        elect = celery(cluster, "elect", cluster.hostname(follower))
        assert elect.returncode == 0, elect.stderr
    else:
        cluster.workers[leader].kill()
    changed = wait_changed(lambda: cluster.holder()[0], holder, 15)
    assert cluster.holder()[0] == cluster.hostname(follower)
    flips_within(ports[follower], 1, changed, budget)
    if how == "elect":  # the old leader stopped before it resigned: 0 at once
        flips_within(ports[leader], 0, changed, budget)

    after = scrape(ports[follower])
    new_term = member(cluster, after, follower, "leaderfeed_term")
    assert new_term > term
    for name in ("leaderfeed_claims_won_total", "leaderfeed_leadership_changes_total"):
        assert (
            member(cluster, after, follower, name)
            == member(cluster, before[follower], follower, name) + 1
        ), name
    assert member(cluster, after, follower, "leaderfeed_renewals_failed_total") == 0
    if how == "elect":
        old = scrape(ports[leader])
        assert member(cluster, old, leader, "leaderfeed_leadership_changes_total") == (
            member(cluster, before[leader], leader, "leaderfeed_leadership_changes_total") + 1
        )
        assert member(cluster, old, leader, "leaderfeed_term") == new_term
        assert member(cluster, old, leader, "leaderfeed_lease_remaining_seconds") == 0


# -- bad input ------------------------------------------------------------------------------------

WARNING = "cannot serve metrics on port"


def test_a_port_in_use_is_one_warning_and_the_worker_runs_on(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_worker(cluster, "w1", port, "threads")
        leader, _ = cluster.wait_leader(["w1"])
        log = process.log()
        assert log.count(WARNING) == 1, log
        assert f"cannot serve metrics on port {port} (Address already in use); running " in log
        assert cluster.send("leader_work", leader, "still-runs").get(timeout=15)["label"]
        report = cluster.broadcast("leaderfeed", ["w1"])[cluster.hostname("w1")]
        assert report["metrics"]["leader_only_admitted"] == 1


def test_without_prometheus_client_the_setting_names_the_extra(
    cluster: Cluster, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked" / "prometheus_client"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('prometheus_client blocked')\n")
    port = free_port()
    command = ["worker", "-P", "threads", "-n", cluster.hostname("w1"), "-Q", cluster.queue("w1")]
    process = CeleryProcess(
        "tests.celery_apps.leader_tasks",
        [*command, "--leaderfeed-metrics-port", str(port)],
        tmp_path / "w1.log",
        env={**cluster.env(), "PYTHONPATH": f"{blocked.parent}:{REPO}"},
    )
    try:
        assert process.process.wait(60) == 1
        log = process.log()
        assert "Traceback" not in log, log
        mentions = [line for line in log.splitlines() if "prometheus" in line]
        assert mentions == [
            f"Error: leaderfeed: leaderfeed_metrics_port is {port} but prometheus_client is "
            "not installed: pip install 'celery-leaderfeed[prometheus]'"
        ], log
    finally:
        process.stop()


# -- beats ----------------------------------------------------------------------------------------


@pytest.fixture
def beats(redis_url: str, tmp_path: Path) -> Iterator[BeatCluster]:
    group = BeatCluster(redis_url, tmp_path)
    try:
        yield group
    finally:
        group.close()


def entry_value(samples: Samples, name: str, **labels: str) -> float:
    found = value(samples, name, entry="pulse", **labels)
    return 0.0 if found is None else found


def test_standalone_beat_metrics_follow_a_failover(beats: BeatCluster) -> None:
    nodes = ("b1", "b2")
    ports = {node: free_port() for node in nodes}
    beats.start_workers([], beat=False)  # the recorder, which runs the task
    for node in nodes:
        command = ["beat", "-S", "leaderfeed", "-l", "INFO"]
        beats._spawn(
            node,
            [*command, "--leaderfeed-metrics-port", str(ports[node])],
            "leaderfeed scheduler in election",
        )
    for node in nodes:
        beats.processes[node].wait_ready(30)
    election = f"{beats.name}.beat"

    def leading() -> str | None:
        for node in nodes:
            if value(scrape(ports[node]), "leaderfeed_is_leader", election=election) == 1:
                return node
        return None

    leader = wait_until(leading, 15, interval=0.02, message="a leading beat")
    follower = next(node for node in nodes if node != leader)
    beats.wait_more_runs(3)

    def sent(node: str) -> float:
        return entry_value(scrape(ports[node]), "leaderfeed_beat_runs_sent_total")

    wait_until(lambda: sent(leader) >= 3, 10, interval=0.05, message="3 runs sent")
    old = scrape(ports[leader])
    last_due = entry_value(old, "leaderfeed_beat_last_due_timestamp_seconds")
    assert time.time() - 2 < last_due <= time.time()
    assert sent(follower) == 0
    assert value(scrape(ports[follower]), "leaderfeed_is_leader", election=election) == 0

    holder = beats.holder(beats.beat_store)[0]
    budget = HEARTBEAT + max(scrape_time(ports[follower]), scrape_time(ports[leader]))
    before = scrape(ports[follower])
    beats.processes[leader].kill()
    changed = wait_changed(lambda: beats.holder(beats.beat_store)[0], holder, 15)
    flips_within(ports[follower], 1, changed, budget, election=election)

    wait_until(lambda: sent(follower) >= 2, 10, interval=0.05, message="the new leader sends")
    after = scrape(ports[follower])
    assert entry_value(after, "leaderfeed_beat_last_due_timestamp_seconds") > last_due
    # Every occurrence handled once: each missed one was coalesced into a send (run_once).
    handled = entry_value(after, "leaderfeed_beat_runs_sent_total") + entry_value(
        after, "leaderfeed_beat_runs_coalesced_total"
    )
    assert handled >= 2
    assert entry_value(after, "leaderfeed_beat_runs_missed_total") == 0
    for name in ("leaderfeed_claims_won_total", "leaderfeed_leadership_changes_total"):
        assert (
            value(after, name, election=election)
            == (value(before, name, election=election) or 0) + 1
        )


def test_embedded_beat_entries_show_on_the_workers_endpoint(beats: BeatCluster) -> None:
    port = free_port()
    beats.start_workers([], beat=False)
    command = [
        "worker", "-l", "INFO", "-n", beats.hostname("w1"), "-P", "threads", "-c", "2",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-B",
        "--leaderfeed-metrics-port", str(port),
    ]  # fmt: skip
    beats._spawn("w1", command, "ready.").wait_ready(30)

    def sent() -> float:
        samples = scrape(port)
        found = value(
            samples,
            "leaderfeed_beat_runs_sent_total",
            election=beats.name,
            member=beats.hostname("w1"),
            entry="pulse",
        )
        return found or 0.0

    wait_until(lambda: sent() >= 2, 15, interval=0.05, message="the embedded beat's sends")
    samples = scrape(port)
    assert value(samples, "leaderfeed_is_leader", member=beats.hostname("w1")) == 1


def test_a_standalone_beat_warns_once_about_a_port_in_use_and_sends(beats: BeatCluster) -> None:
    beats.start_workers([], beat=False)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = ["beat", "-S", "leaderfeed", "-l", "INFO", "--leaderfeed-metrics-port", str(port)]
        beat = beats._spawn("b1", command, "leaderfeed scheduler in election").wait_ready(30)
        beats.wait_more_runs(2)
        assert beat.log().count(WARNING) == 1, beat.log()


def test_a_standalone_beat_without_prometheus_client_names_the_extra(
    beats: BeatCluster, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked" / "prometheus_client"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('prometheus_client blocked')\n")
    port = free_port()
    beats.extra_env["PYTHONPATH"] = f"{blocked.parent}:{REPO}"
    command = ["beat", "-S", "leaderfeed", "-l", "INFO", "--leaderfeed-metrics-port", str(port)]
    beat = beats._spawn("b1", command, "unused")
    assert beat.process.wait(60) != 0
    log = beat.log()
    assert "Traceback" not in log, log
    mentions = [line for line in log.splitlines() if "prometheus" in line]
    assert len(mentions) == 1, log
    assert mentions[0].endswith(
        f"leaderfeed: leaderfeed_metrics_port is {port} but prometheus_client is not "
        "installed: pip install 'celery-leaderfeed[prometheus]'"
    ), log
