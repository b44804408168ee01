"""``celery inspect leaderfeed`` and ``celery leaderfeed status``, in process.

The status command reads the store directly; with ``memory://`` stores the tests share the store
with the command because both run in this process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_main
from celery.contrib.testing.worker import start_worker
from celery.worker.control import Panel
from click.testing import CliRunner, Result

from celery_leaderfeed import LeaderFeed
from celery_leaderfeed.backends.memory import memory_store
from celery_leaderfeed.celery.cli import leaderfeed as leaderfeed_command
from celery_leaderfeed.celery.control import leaderfeed as inspect_leaderfeed
from celery_leaderfeed.celery.worker_lease import worker_feed
from harness.helpers import closed_port_url
from tests.celery_apps.memory_app import TIMING, make_app, store_url

#: For the test that goes through the real ``celery`` command (``-A tests.test_control_cli``).
cli_app = make_app("memory://")


def status(app: Celery, *args: str) -> Result:
    context = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(leaderfeed_command, ["status", *args], obj=context)


@pytest.fixture
def app(redis_url: str) -> Celery:
    return make_app(redis_url)


@pytest.fixture
def leader(app: Celery) -> Iterator[LeaderFeed]:
    """A member leading the app's election from this process."""
    feed = LeaderFeed(
        store_url(app),
        name=app.conf.leaderfeed_name,
        member_id="member-1",
        heartbeat_interval=TIMING["leaderfeed_heartbeat_interval"],
        election_timeout_min=TIMING["leaderfeed_election_timeout_min"],
        election_timeout_max=TIMING["leaderfeed_election_timeout_max"],
    )
    feed.start()
    assert feed.wait_for_leadership(5)
    yield feed
    feed.stop()


# -- celery inspect leaderfeed ---------------------------------------------------------------


def test_inspect_leaderfeed_answers_over_the_broker(app: Celery) -> None:
    assert Panel.meta["leaderfeed"].type == "inspect"  # registered by install(app)
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=20) as worker:
        feed = worker_feed(app)
        assert feed is not None and feed.wait_for_leadership(5)
        replies = app.control.broadcast(
            "leaderfeed", reply=True, timeout=3.0, destination=[worker.hostname]
        )
        assert len(replies) == 1
        report = replies[0][worker.hostname]
        assert report["member"] == worker.hostname
        assert report["name"] == app.conf.leaderfeed_name
        assert report["backend"] == store_url(app)
        assert (report["role"], report["leader"]) == ("leader", worker.hostname)
        assert report["term"] == feed.term
        assert report["status"] == "started"
        assert 0 < report["lease_remaining"] <= TIMING["leaderfeed_election_timeout_min"]
        assert 0 <= report["lease_age"] < 1 and report["leading_for"] >= 0


def test_inspect_leaderfeed_without_the_step_says_so(app: Celery) -> None:
    reply = inspect_leaderfeed(SimpleNamespace(app=app))
    assert "error" in reply and "install" in reply["error"]


# -- celery leaderfeed status ----------------------------------------------------------------


def test_status_shows_the_record_as_stored(app: Celery, leader: LeaderFeed) -> None:
    result = status(app)
    assert result.exit_code == 0, result.output
    shown = {
        key: value
        for key, value in re.findall(r"^(\w+(?: \w+)?)\s{2,}(.*)$", result.output, re.MULTILINE)
    }
    assert shown["holder"] == "member-1"
    assert shown["term"] == str(leader.term)
    assert shown["state"] == "held"
    assert shown["nominee"] == "-"
    assert set(shown) >= {"store time", "renewed at", "record age", "version", "backend"}

    fields = json.loads(status(app, "--json").output)
    assert fields["holder"] == "member-1"
    assert fields["election"] == app.conf.leaderfeed_name
    assert fields["backend"] == store_url(app)
    assert fields["version"] >= 1 and fields["nominee"] is None
    assert 0 <= fields["record_age"] < 1.0
    assert fields["store_time"].endswith("+00:00")


def test_status_tells_missing_vacant_and_foreign_records_apart(app: Celery) -> None:
    assert json.loads(status(app, "--json").output)["state"] == "missing"

    with LeaderFeed(store_url(app), name=app.conf.leaderfeed_name, **feed_timing()) as feed:
        assert feed.wait_for_leadership(5)
    vacant = json.loads(status(app, "--json").output)
    assert (vacant["state"], vacant["holder"]) == ("vacant", None)

    memory_store(store_url(app)).put_raw(app.conf.leaderfeed_name, "not a record")
    assert json.loads(status(app, "--json").output)["state"] == "corrupt"

    other = json.loads(status(app, "--json", "--name", "another-election").output)
    assert (other["election"], other["state"]) == ("another-election", "missing")


def test_status_fails_in_one_line_when_the_store_is_unreachable(app: Celery) -> None:
    store = memory_store(store_url(app))
    with store.outage():
        result = status(app)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_status_never_prints_the_password(app: Celery) -> None:
    secret = "Sup3r-Secret-9"
    unreachable = closed_port_url("redis").replace("redis://", f"redis://:{secret}@") + "/0"
    misspelt = f"nosuch://:{secret}@host/0"
    for result in (status(app, "--backend", unreachable), status(app, "--backend", misspelt)):
        assert result.exit_code == 1
        assert secret not in result.output
        assert ":***@" in result.output
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_status_is_a_celery_subcommand() -> None:
    runner = CliRunner()
    result = runner.invoke(
        celery_main, ["-A", "tests.test_control_cli:cli_app", "leaderfeed", "status", "--json"]
    )
    assert result.exit_code == 0, result.output
    fields = json.loads(result.output)
    assert fields["election"] == cli_app.conf.leaderfeed_name
    assert fields["state"] == "missing"


def feed_timing() -> dict[str, float]:
    return {
        "heartbeat_interval": TIMING["leaderfeed_heartbeat_interval"],
        "election_timeout_min": TIMING["leaderfeed_election_timeout_min"],
        "election_timeout_max": TIMING["leaderfeed_election_timeout_max"],
    }
