"""``celery leaderfeed check`` and ``status --json``: the verdicts, in process and as a user runs
them.

In process the store is ``memory://`` (shared with the command because both run here), with
outages injected; the command-line mistakes go through the real ``celery`` command in a
subprocess, reading what it prints. Real workers and a real store: ``test_operate_workers.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from celery.schedules import crontab
from click.testing import CliRunner, Result

from celery_leaderfeed import LeaderFeed
from celery_leaderfeed.backends.memory import memory_store
from celery_leaderfeed.celery.cli import leaderfeed as leaderfeed_command
from celery_leaderfeed.celery.health import Health, judge_entries
from celery_leaderfeed.celery.occurrences import EntryState
from harness.helpers import closed_port_url
from tests.celery_apps.memory_app import TIMING, make_app, member, store_url
from tests.workers import REPO

NOW = datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone.utc)


def run(app: Celery, *args: str) -> Result:
    context = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(leaderfeed_command, list(args), obj=context)


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(
        redis_url,
        beat_schedule={
            "every-10s": {"task": "t.every", "schedule": 10.0},
            "hourly": {"task": "t.hourly", "schedule": crontab(minute=0)},
            "fresh": {"task": "t.fresh", "schedule": timedelta(minutes=5)},
        },
    )


@pytest.fixture
def leader(app: Celery) -> Iterator[LeaderFeed]:
    with member(app, "node-1") as feed:
        assert feed.wait_for_leadership(5)
        yield feed


def put_state(app: Celery, feed: LeaderFeed, entry: str, last_due: datetime) -> None:
    lease = feed.lease
    assert lease.term is not None and lease.token is not None
    state = EntryState(last_due=last_due, term=lease.term, runs=3)
    store = feed.backend
    current = store.read_entries().get(entry)
    assert store.write_entry(lease.term, lease.token, entry, current, state.encode())


# -- the verdicts ---------------------------------------------------------------------------------


def test_ok_while_a_member_leads(app: Celery, leader: LeaderFeed) -> None:
    result = run(app, "check")
    assert result.exit_code == Health.OK, result.output
    assert (
        result.output
        == f"ok: node-1 leads election {app.conf.leaderfeed_name!r} (term {leader.term})\n"
    )


def test_no_valid_leader_when_missing_vacant_or_corrupt(app: Celery) -> None:
    missing = run(app, "check")
    assert missing.exit_code == Health.NO_LEADER
    assert missing.output.startswith("no valid leader: no record of ")
    with member(app, "node-1") as feed:
        assert feed.wait_for_leadership(5)
    vacant = run(app, "check")  # it resigned on the way out
    assert (vacant.exit_code, vacant.output.count("\n")) == (Health.NO_LEADER, 1)
    assert "vacant" in vacant.output
    memory_store(store_url(app)).put_raw(app.conf.leaderfeed_name, "not a record")
    corrupt = run(app, "check", "--json")
    assert corrupt.exit_code == Health.NO_LEADER
    shown = json.loads(corrupt.output)
    assert (shown["state"], shown["exit_code"]) == ("corrupt", 3)


def test_store_unreachable_wins_and_comes_within_the_bound(app: Celery) -> None:
    with memory_store(store_url(app)).outage():
        began = time.monotonic()
        result = run(app, "check", "--overdue-periods", "1")
        elapsed = time.monotonic() - began
    assert result.exit_code == Health.STORE_UNREACHABLE
    assert result.output.startswith("store unreachable: ") and result.output.count("\n") == 1
    assert elapsed < TIMING["leaderfeed_election_timeout_min"]


def test_overdue_entries_are_judged_in_periods_of_their_own_schedule(
    app: Celery, leader: LeaderFeed
) -> None:
    now = datetime.now(timezone.utc)
    put_state(app, leader, "every-10s", now - timedelta(seconds=45))  # next was due 35 s ago
    put_state(app, leader, "hourly", now - timedelta(minutes=1))  # next due within the hour
    put_state(app, leader, "removed", now - timedelta(days=3))  # not in beat_schedule
    result = run(app, "check", "--overdue-periods", "3", "--json")
    assert result.exit_code == Health.OVERDUE, result.output
    shown = json.loads(result.output)
    entries = shown["entries"]
    assert entries["every-10s"]["state"] == "overdue" and entries["every-10s"]["period"] == 10
    assert 3.4 < entries["every-10s"]["late_periods"] < 3.8
    assert entries["hourly"]["state"] == "on_time" and entries["hourly"]["period"] == 3600
    assert entries["fresh"] == {"state": "unseen"}  # no leader handled it yet: not judged
    assert entries["removed"]["state"] == "unscheduled" and entries["removed"]["runs"] == 3
    assert shown["findings"] == [
        f"overdue: entry 'every-10s' was due at {entries['every-10s']['next_due']}, "
        f"{entries['every-10s']['late_periods']:g} periods ago (limit 3)"
    ]
    assert run(app, "check", "--overdue-periods", "4").exit_code == Health.OK
    assert run(app, "check").exit_code == Health.OK  # entries are judged only when asked


def test_no_leader_outranks_an_overdue_entry(app: Celery) -> None:
    with member(app, "node-1") as feed:
        assert feed.wait_for_leadership(5)
        put_state(app, feed, "every-10s", datetime.now(timezone.utc) - timedelta(minutes=5))
    result = run(app, "check", "--overdue-periods", "1")
    assert result.exit_code == Health.NO_LEADER
    assert [line.split(":")[0] for line in result.output.splitlines()] == [
        "no valid leader",
        "overdue",
    ]


def test_judging_uses_the_given_clock_only() -> None:
    app = Celery("judge", set_as_current=False)
    app.conf.beat_schedule = {"e": {"task": "t", "schedule": 10.0}}
    stored = {"e": EntryState(last_due=NOW - timedelta(seconds=25), term=4).encode()}
    judged = judge_entries(app, stored, NOW, overdue_periods=1)["e"]
    assert judged["next_due"] == "2026-03-01T12:00:15.000000Z"
    assert (judged["state"], judged["late_periods"]) == ("overdue", 1.5)
    assert judge_entries(app, stored, NOW, overdue_periods=2)["e"]["state"] == "on_time"
    corrupt = judge_entries(app, {"e": "{nonsense"}, NOW, overdue_periods=2)["e"]
    assert corrupt["state"] == "corrupt"


def test_status_json_holds_every_field(app: Celery, leader: LeaderFeed) -> None:
    shown = json.loads(run(app, "status", "--json").output)
    assert set(shown) == {
        "election",
        "backend",
        "state",
        "holder",
        "last_holder",
        "term",
        "version",
        "nominee",
        "suspect",
        "store_time",
        "renewed_at",
        "record_age",
        "election_timeout",
        "entries",
    }
    assert (shown["holder"], shown["suspect"]) == ("node-1", False)
    assert set(shown["entries"]) == {"every-10s", "hourly", "fresh"}


def test_beat_reads_the_standalone_beats_election(app: Celery) -> None:
    beat_election = f"{app.conf.leaderfeed_name}.beat"
    feed = LeaderFeed(
        store_url(app), name=beat_election, member_id="beat-1", heartbeat_interval=0.05,
        election_timeout_min=0.15, election_timeout_max=0.25,
    )  # fmt: skip
    with feed:
        assert feed.wait_for_leadership(5)
        assert run(app, "check").exit_code == Health.NO_LEADER  # the workers' election
        result = run(app, "check", "--beat")
        assert result.exit_code == Health.OK
        assert result.output.startswith(f"ok: beat-1 leads election {beat_election!r}")


# -- mistakes, as a user makes them ---------------------------------------------------------------


def celery(*args: str, **conf: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.celery_apps.leader_tasks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "LEADERFEED_TEST_CONF": json.dumps(conf)},
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--overdue-periods", "0"], "--overdue-periods"),
        (["--overdue-periods", "soon"], "--overdue-periods"),
        (["--timeout", "-1"], "--timeout"),
    ],
)
def test_a_bad_option_is_one_line_and_a_usage_error(
    redis_url: str, args: list[str], says: str
) -> None:
    result = celery("leaderfeed", "check", *args, broker_url=redis_url)
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and says in error_lines[0]


def test_a_bad_setting_is_one_line_and_exit_1_with_no_password(redis_url: str) -> None:
    secret = "Sup3r-Secret-9"
    for backend in (f"nosuch://:{secret}@host/0", "redis://:x@127.0.0.1:1/0"):
        conf = {"broker_url": redis_url, "leaderfeed_heartbeat_interval": -1}
        if backend.startswith("nosuch"):
            conf = {"broker_url": redis_url, "leaderfeed_backend": backend}
        result = celery("leaderfeed", "check", **conf)
        assert result.returncode == Health.CONFIGURATION, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
        assert secret not in result.stderr + result.stdout


def test_an_unreachable_store_never_shows_its_password(redis_url: str) -> None:
    secret = "Sup3r-Secret-9"
    unreachable = closed_port_url("redis").replace("redis://", f"redis://:{secret}@") + "/0"
    result = celery("leaderfeed", "check", broker_url=redis_url, leaderfeed_backend=unreachable)
    assert result.returncode == Health.STORE_UNREACHABLE
    assert result.stdout.startswith("store unreachable: ") and result.stdout.count("\n") == 1
    assert secret not in result.stdout + result.stderr and ":***@" in result.stdout


def test_elect_without_a_node_is_a_usage_error(redis_url: str) -> None:
    result = celery("leaderfeed", "elect", broker_url=redis_url)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("Error")] == [
        "Error: Missing argument 'NODE'."
    ]
