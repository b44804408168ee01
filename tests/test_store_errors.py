"""A store that refuses us, met as a user meets it: real ``celery worker`` and ``celery beat``
processes, real redis-servers, and what the processes log.

* a wrong password: one ERROR naming the cause and the fix, repeated once per report interval
  (15 election timeouts: 13.5 s at these timings, a minute at the defaults) with a count, and
  leadership as soon as the password is fixed in the store - no restart;
* a schedule key holding a string (Redis WRONGTYPE): the beat says which key and what to do,
  retries slowly (counted in the server's own command statistics) and sends once it is deleted;
* a ``rediss://`` URL to a plain server: the TLS mismatch is named;
* claims a beat keeps being refused (its store does not show its worker's term): one INFO, one
  ERROR, a handful of tries - this used to write thousands of lines a second.

The same refusals from MongoDB and RethinkDB are checked against their test servers, in process.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.errors import BackendUnavailable, StoreRefused
from harness.helpers import free_port, wait_until
from harness.servers.redis_process import RedisServer
from harness.servers.rethinkdb_wire.process import start_rethinkdb_wire_server
from harness.servers.secantus_process import SecantusServer
from tests.workers import CeleryProcess

pytestmark = pytest.mark.celery_workers

TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}
#: ``retry.report_interval`` and ``retry.refused_pace`` at these timings.
REPORT_EVERY = 15 * 0.9
REFUSED_PACE = 5.0
WORKER = ["worker", "-l", "INFO", "-P", "solo", "--without-gossip", "--without-mingle"]
WORKER += ["--without-heartbeat"]
LINE = re.compile(r"^\[(?P<at>[\d-]+ [\d:,]+): (?P<level>\w+)/(?P<process>\w+)\] (?P<text>.*)$")


def lines(process: CeleryProcess, level: str | None = None) -> list[tuple[datetime, str]]:
    """(time, text) of the log lines of ``process`` (at ``level``)."""
    found = []
    for line in process.log().splitlines():
        match = LINE.match(line)
        if match and (level is None or match["level"] == level):
            at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
            found.append((at, match["text"]))
    return found


def leaderfeed_lines(process: CeleryProcess) -> list[str]:
    return [text for _, text in lines(process) if text.startswith(("leaderfeed", "beat:"))]


@pytest.fixture
def name() -> str:
    return f"se-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def processes() -> Iterator[list[CeleryProcess]]:
    started: list[CeleryProcess] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(password="right-Pa55").start()
    yield server
    server.close()


def start(
    processes: list[CeleryProcess],
    tmp_path: Path,
    app: str,
    command: list[str],
    conf: dict[str, Any],
    ready: str = "ready.",
) -> CeleryProcess:
    process = CeleryProcess(
        app,
        command,
        tmp_path / f"{command[0]}-{len(processes)}.log",
        env={"LEADERFEED_TEST_CONF": json.dumps({**TIMING, **conf})},
        ready_marker=ready,
    )
    processes.append(process)
    return process.wait_ready(30)


# -- the worker ------------------------------------------------------------------------------------


def test_a_wrong_password_is_one_error_per_interval_until_fixed_in_the_store(
    redis_url: str,
    private_redis: RedisServer,
    name: str,
    tmp_path: Path,
    processes: list[CeleryProcess],
) -> None:
    secret = "wrong-Pa55-7731"
    conf = {
        "broker_url": redis_url,
        "leaderfeed_backend": f"redis://:{secret}@127.0.0.1:{private_redis.port}/0",
        "leaderfeed_name": name,
        "task_default_queue": name,
    }
    worker = start(
        processes, tmp_path, "tests.celery_apps.leader_tasks", [*WORKER, "-n", f"w@{name}"], conf
    )
    wait_until(lambda: len(lines(worker, "ERROR")) >= 2, REPORT_EVERY + 15, interval=0.1)
    (first_at, first), (second_at, second) = lines(worker, "ERROR")[:2]
    assert first == (
        f"leaderfeed {name!r}: joining the election failed: the store refused the password for "
        f"user 'default' at redis://:***@127.0.0.1:{private_redis.port}/0: check the user and "
        "password in the backend URL (leaderfeed_backend) (connect: AuthenticationError: "
        "invalid username-password pair or user is disabled.); retrying, following meanwhile"
    )
    assert "still failing:" in second and "check the user and password" in second
    gap = (second_at - first_at).total_seconds()
    assert REPORT_EVERY <= gap <= REPORT_EVERY + REFUSED_PACE + 1, gap
    # Nothing else was said meanwhile: was a WARNING every attempt, forever.
    said = [text for at, text in lines(worker) if first_at <= at <= second_at]
    assert len([text for text in said if text.startswith("leaderfeed")]) == 2, said

    private_redis.client().config_set("requirepass", secret)  # fixed in the store
    wait_until(lambda: "works again" in worker.log(), REFUSED_PACE + 5, interval=0.1)
    wait_until(lambda: f"w@{name} became leader" in worker.log(), 10, interval=0.1)
    assert secret not in worker.log()


def test_a_tls_url_to_a_plain_server_names_the_mismatch(
    redis_url: str, name: str, tmp_path: Path, processes: list[CeleryProcess]
) -> None:
    conf = {
        "broker_url": redis_url,
        "leaderfeed_backend": redis_url.replace("redis://", "rediss://"),
        "leaderfeed_name": name,
        "task_default_queue": name,
    }
    worker = start(
        processes, tmp_path, "tests.celery_apps.leader_tasks", [*WORKER, "-n", f"w@{name}"], conf
    )
    wait_until(lambda: lines(worker, "ERROR"), 10, interval=0.1)
    time.sleep(3.0)  # a window measured, not a wait: nothing more may be logged in it
    errors = lines(worker, "ERROR")
    assert len(errors) == 1, errors
    assert "the store did not answer the TLS handshake (a plain, non-TLS server?)" in errors[0][1]
    assert "use redis:// instead of rediss://" in errors[0][1]
    assert [text for text in leaderfeed_lines(worker) if "WARNING" in text] == []


# -- the beat --------------------------------------------------------------------------------------


def beat_conf(broker: str, name: str) -> dict[str, Any]:
    return {
        "broker_url": broker,
        "leaderfeed_name": name,
        "task_default_queue": name,
        "beat_schedule": {
            "pulse": {"task": "beat_app.pulse", "schedule": 0.5, "options": {"queue": name}}
        },
    }


def hgetall_calls(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


def test_a_schedule_key_of_the_wrong_type_is_named_retried_slowly_and_healed(
    private_redis: RedisServer, name: str, tmp_path: Path, processes: list[CeleryProcess]
) -> None:
    client = private_redis.client()
    schedule_key = f"leaderfeed:{{{name}.beat}}:schedule"
    client.set(schedule_key, "someone else's string")
    beat = start(
        processes,
        tmp_path,
        "tests.celery_apps.beat_app",
        ["beat", "-S", "leaderfeed", "-l", "INFO"],
        beat_conf(private_redis.url, name),
        ready="leaderfeed scheduler in election",
    )
    wait_until(lambda: lines(beat, "ERROR"), 15, interval=0.1)
    reads_before = hgetall_calls(private_redis)
    time.sleep(5.0)  # a window measured, not a wait: the schedule reads in it are counted
    reads = hgetall_calls(private_redis) - reads_before
    assert reads <= 8, reads  # was: every tick, 4 a second (20 here), for as long as it lasted
    (error,) = lines(beat, "ERROR")
    assert (
        f"key '{schedule_key}' holds another type of value than leaderfeed keeps there"
        in (error[1])
    )
    assert "delete that key" in error[1] and "WRONGTYPE" in error[1]

    client.delete(schedule_key)
    wait_until(lambda: "beat: sending pulse@" in beat.log(), REFUSED_PACE + 5, interval=0.1)
    assert "the schedule state works again" in beat.log()


def test_claims_refused_for_good_are_retried_slowly_not_in_a_loop(
    redis_url: str, name: str, tmp_path: Path, processes: list[CeleryProcess]
) -> None:
    """The beat child of ``worker -B`` fences its claims on a store that does not show its
    worker's term; the old scheduler ticked again at once after each refused claim."""
    worker = start(
        processes,
        tmp_path,
        "tests.celery_apps.split_store_app",
        [*WORKER, "-n", f"w@{name}", "-B"],
        beat_conf(redis_url, name),
    )
    wait_until(lambda: "refused" in worker.log(), 15, interval=0.1)
    began = time.monotonic()
    time.sleep(5.0)  # a window measured, not a wait: the lines in it are counted
    counted = [text for text in leaderfeed_lines(worker) if text.startswith("beat:")]
    assert len(counted) <= 6, counted[:10]  # was: ~20,000 a second
    refusals = [text for text in counted if "refused" in text]
    assert len(refusals) == 2, refusals  # the first refusal (INFO), then why (ERROR)
    assert refusals[1].startswith("beat: claiming schedule state failed: the store shows no")
    assert "the same store as its election" in refusals[1]
    assert time.monotonic() - began < 10


# -- the same refusals from MongoDB and RethinkDB --------------------------------------------------


class AuthSecantus(SecantusServer):
    """SecantusDB requiring SCRAM authentication (it has no users: every login fails)."""

    def command(self) -> list[str]:
        return [*super().command(), "--auth"]


def test_mongodb_refusals_from_a_server_that_requires_authentication() -> None:
    server = AuthSecantus().start()
    try:
        secret = "M0ngo-Secret-1"
        port = server.port
        login = f"mongodb://bob:{secret}@127.0.0.1:{port}/lf?directConnection=true"
        anonymous = f"mongodb://127.0.0.1:{port}/lf?directConnection=true"
        backend = backend_from_url(login, name="e", timeout=2.0)
        with pytest.raises(StoreRefused, match="refused the credentials of user 'bob'") as info:
            backend.connect()
        assert secret not in str(info.value) and "authSource" in str(info.value)
        backend = backend_from_url(anonymous, name="e", timeout=2.0)
        backend.connect()
        with pytest.raises(StoreRefused, match="does not allow what leaderfeed needs"):
            backend.create()
        backend.close()
    finally:
        server.close()


def test_rethinkdb_refusals_from_a_server_with_a_password() -> None:
    server = start_rethinkdb_wire_server(password="right-Pa55")
    try:
        base = f"{server.host}:{server.port}/lf"
        wrong = backend_from_url(f"rethinkdb://admin:wrong-Pa55@{base}", name="e")
        with pytest.raises(StoreRefused, match="refused the password for user 'admin'") as info:
            wrong.connect()
        assert "wrong-Pa55" not in str(info.value)
        stranger = backend_from_url(f"rethinkdb://bob:right-Pa55@{base}", name="e")
        with pytest.raises(StoreRefused, match="the store has no user 'bob'"):
            stranger.connect()
        unreachable = backend_from_url(f"rethinkdb://admin:x@127.0.0.1:{free_port()}/lf")
        with pytest.raises(BackendUnavailable) as down:
            unreachable.connect()
        assert not isinstance(down.value, StoreRefused)  # an outage may heal
    finally:
        server.stop()


def test_redis_refusals_and_outages_from_real_servers(private_redis: RedisServer) -> None:
    port = private_redis.port
    cases = {
        f"redis://:wrong-Pa55@127.0.0.1:{port}/0": "refused the password for user 'default'",
        f"redis://127.0.0.1:{port}/0": "requires a password and the backend URL gives none",
        f"redis://:right-Pa55@127.0.0.1:{port}/99": "the store has no database 99",
        f"rediss://:right-Pa55@127.0.0.1:{port}/0": "did not answer the TLS handshake",
    }
    for url, expected in cases.items():
        backend = backend_from_url(url, name="e", timeout=0.5)
        with pytest.raises(StoreRefused, match=re.escape(expected)):
            backend.connect()
        backend.close()
    private_redis.stop()
    down = backend_from_url(f"redis://:right-Pa55@127.0.0.1:{port}/0", name="e", timeout=0.5)
    with pytest.raises(BackendUnavailable) as outage:
        down.connect()
    assert not isinstance(outage.value, StoreRefused)
