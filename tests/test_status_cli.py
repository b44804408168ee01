"""``celery leaderfeed status`` tells a live leader from one that stopped renewing.

A real worker leads; ``SIGSTOP`` freezes it, and the real ``celery leaderfeed status`` command
(a subprocess, as a user runs it) reports the record as ``expired`` once it is older than the
app's ``leaderfeed_election_timeout_max``, naming the frozen worker as the last holder only;
after ``SIGCONT`` the worker leads again and the record is ``held``. The age is the store's
clock minus the store's clock at the last renewal, which the pure tests check without any
local clock.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_leaderfeed.celery.cli import describe
from celery_leaderfeed.record import LeaderRecord, Observation
from harness.helpers import wait_until
from tests.workers import REPO, CeleryProcess

APP = "tests.celery_apps.leader_tasks"
TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}


# -- the rule, without clocks of our own ---------------------------------------------------------

STORE_NOW = 1_000_000.0  # far from time.time(): only the store's clock may count


def record(renewed_at: float | None, holder: str | None = "node1") -> LeaderRecord:
    return LeaderRecord(
        holder=holder,
        token=None if holder is None else "t",
        term=7,
        version=42,
        renewed_at=renewed_at,
    )


@pytest.mark.parametrize(
    ("observation", "state", "holder", "last_holder", "age"),
    [
        (Observation(record(STORE_NOW - 0.5), store_time=STORE_NOW), "held", "node1", "node1", 0.5),
        (Observation(record(STORE_NOW - 4.0), store_time=STORE_NOW), "held", "node1", "node1", 4.0),
        (Observation(record(STORE_NOW - 4.5), store_time=STORE_NOW), "expired", None, "node1", 4.5),
        (Observation(record(STORE_NOW - 60, None), store_time=STORE_NOW), "vacant", None, None, 60),
        (Observation(None, store_time=STORE_NOW), "missing", None, None, None),
        (Observation(None, corrupt=True, store_time=STORE_NOW), "corrupt", None, None, None),
        # A backend that does not tell its clock: the age is unknown, nothing is judged.
        (Observation(record(STORE_NOW - 60)), "held", "node1", "node1", None),
    ],
    ids=["fresh", "at-timeout", "expired", "vacant", "missing", "corrupt", "no-store-clock"],
)
def test_the_state_is_judged_by_the_store_clock_against_the_election_timeout(
    observation: Observation, state: str, holder: str | None, last_holder: str | None, age: Any
) -> None:
    fields = describe(observation, timeout=4.0)
    assert (fields["state"], fields["holder"], fields["last_holder"]) == (
        state,
        holder,
        last_holder,
    )
    assert fields["record_age"] == age
    assert fields["election_timeout"] == 4.0


# -- a real worker that stops renewing -------------------------------------------------------------


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[CeleryProcess, dict[str, str]]]:
    name = f"st-{uuid.uuid4().hex[:10]}"
    conf = {"broker_url": redis_url, "leaderfeed_name": name, "task_default_queue": name, **TIMING}
    env = {"LEADERFEED_TEST_CONF": json.dumps(conf)}
    command = ["worker", "-l", "INFO", "-P", "solo", "-n", f"w1@{name}"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    process = CeleryProcess(APP, command, tmp_path / "w1.log", env=env).wait_ready(30)
    try:
        yield process, env
    finally:
        process.send(signal.SIGCONT)
        process.stop()


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A APP leaderfeed status ARGS``, run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, "leaderfeed", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        check=True,
    )


def status_json(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(status(env, "--json").stdout)  # type: ignore[no-any-return]


@pytest.mark.celery_workers
def test_status_says_expired_for_a_frozen_leader_and_held_once_it_renews(
    worker: tuple[CeleryProcess, dict[str, str]],
) -> None:
    process, env = worker
    hostname = process.command[process.command.index("-n") + 1]
    held = wait_until(lambda: (s := status_json(env))["state"] == "held" and s, 20, interval=0.1)
    assert (held["holder"], held["last_holder"]) == (hostname, hostname)
    assert held["record_age"] < 0.9 and held["election_timeout"] == 0.9

    process.send(signal.SIGSTOP)  # it stops renewing, and its record stays
    expired = wait_until(
        lambda: (s := status_json(env))["state"] == "expired" and s, 20, interval=0.2
    )
    assert expired["holder"] is None and expired["last_holder"] == hostname
    assert expired["record_age"] > 0.9
    shown = dict(re.findall(r"^(\w+(?: \w+)?)\s{2,}(.*)$", status(env).stdout, re.MULTILINE))
    assert (shown["state"], shown["holder"], shown["last holder"]) == ("expired", "-", hostname)

    process.send(signal.SIGCONT)
    again = wait_until(lambda: (s := status_json(env))["state"] == "held" and s, 20, interval=0.1)
    assert again["holder"] == hostname
