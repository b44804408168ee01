"""Configuration mistakes as a user meets them: real ``celery worker`` and ``celery beat`` runs.

A bad setting ends the worker and beat alike with one line naming the setting and the rule,
a non-zero status and no traceback; beat takes the worker's ``--leaderfeed-*`` options; keys no
setting reads and in-process stores are warned about once; the Celery layer without Celery
installed names the extra to install. Each case runs ``celery -A tests.celery_apps.config_app``
with its settings in the environment and reads what the process printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from harness.helpers import closed_port_url, wait_until
from tests.celery_runs import BEAT_STARTED, Runs, lines_matching, log_line
from tests.workers import REPO


@pytest.fixture
def on_redis(redis_url: str, runs: Runs) -> Iterator[dict[str, Any]]:
    """Settings of a working app on the session Redis, in an election and queue of its own."""
    yield {
        "broker_url": redis_url,
        "leaderfeed_name": runs.name,
        "task_default_queue": runs.name,
        "leaderfeed_heartbeat_interval": 0.2,
        "leaderfeed_election_timeout_min": 0.6,
        "leaderfeed_election_timeout_max": 0.9,
    }
    runs.close()  # before the keys go, or a live process writes them again
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{runs.name}*"):
        client.delete(key)
    client.close()


def nothing_listens() -> dict[str, Any]:
    """Settings of an app whose broker (and so default store) does not exist: a bad setting
    must stop the process before anything connects."""
    return {"broker_url": closed_port_url("redis") + "/0"}


# -- every bad setting: one line, a non-zero status, no traceback ---------------------------------

FLOOR = (
    "must be at least 0.02 s: a store round trip plus a Python thread's scheduling delay take "
    "several ms, so a shorter one makes leadership flap"
)
MISTAKES = [
    pytest.param(
        {"leaderfeed_heartbeat_interval": -1},
        "leaderfeed_heartbeat_interval must be a positive number of seconds, got -1",
        id="negative",
    ),
    pytest.param(
        {"leaderfeed_heartbeat_interval": 0.005},
        f"leaderfeed_heartbeat_interval (0.005 s) {FLOOR}",
        id="heartbeat-below-floor",
    ),
    pytest.param(
        {"leaderfeed_operation_timeout": 0.01},
        f"leaderfeed_operation_timeout (0.01 s) {FLOOR}",
        id="operation-timeout-below-floor",
    ),
    pytest.param(
        {"leaderfeed_election_timeout_min": 1.5},
        "leaderfeed_election_timeout_min (1.5 s) must be at least twice heartbeat_interval "
        "(1 s), so a leader can miss a renewal without losing its lease",
        id="timeouts",
    ),
    pytest.param(
        {"leaderfeed_follower_policy": "ignore"},
        "leaderfeed_follower_policy must be one of requeue, skip, retry, raise; got 'ignore'",
        id="choice",
    ),
    pytest.param(
        {"leaderfeed_queue": " "},
        "leaderfeed_queue must be a queue name, got ' '",
        id="leader-queue",
    ),
    pytest.param(
        {"leaderfeed_dedup_window": -1},
        "leaderfeed_dedup_window must be a positive number of seconds, got -1",
        id="dedup-window",
    ),
    pytest.param(
        {
            "leaderfeed_backend": "postgresql://127.0.0.1:1/nowhere",
            "leaderfeed_backend_options": {"fast_failover": "maybe"},
        },
        "option 'fast_failover' must be true or false; got 'maybe'",
        id="fast-failover",
    ),
    pytest.param(
        {"leaderfeed_eager_policy": "loud"},
        "leaderfeed_eager_policy must be one of error, run, follower; got 'loud'",
        id="eager-policy",
    ),
]
#: How each command reports a bad setting: worker and beat as a click error; beat without its
#: banner (--quiet) in its log, where it gets to only after starting its logging.
COMMANDS = [
    pytest.param(["worker", "-P", "solo"], "Error: {}", id="worker"),
    pytest.param(["beat"], "Error: {}", id="beat"),
    pytest.param(["--quiet", "beat"], "CRITICAL {}", id="quiet-beat"),
]


def error_pattern(style: str, message: str) -> str:
    text = f"leaderfeed: {message}"
    if style.startswith("CRITICAL"):
        return log_line("CRITICAL", text)
    return re.escape(f"Error: {text}")


@pytest.mark.celery_workers
@pytest.mark.parametrize(("command", "style"), COMMANDS)
@pytest.mark.parametrize(("conf", "message"), MISTAKES)
def test_a_bad_setting_ends_worker_and_beat_in_one_line(
    runs: Runs, command: list[str], style: str, conf: dict[str, Any], message: str
) -> None:
    status, output = runs.run_to_exit(command, {**nothing_listens(), **conf})
    assert status == 1, output
    assert "Traceback" not in output, output
    # The one line is the only one about leaderfeed at all.
    about_us = [line for line in output.splitlines() if "leaderfeed" in line]
    assert len(about_us) == 1, output
    assert re.fullmatch(error_pattern(style, message), about_us[0]), output


# -- beat's --leaderfeed-* options ----------------------------------------------------------------


@pytest.mark.celery_workers
def test_a_bad_beat_option_ends_beat_in_one_line(runs: Runs) -> None:
    command = ["beat", "--leaderfeed-heartbeat-interval", "0.005"]
    status, output = runs.run_to_exit(command, nothing_listens())
    assert status == 1, output
    assert "Traceback" not in output, output
    expected = f"Error: leaderfeed: leaderfeed_heartbeat_interval (0.005 s) {FLOOR}"
    assert [line for line in output.splitlines() if "leaderfeed" in line] == [expected]


@pytest.mark.celery_workers
def test_beat_runs_its_election_with_the_timings_of_its_command_line(
    runs: Runs, on_redis: dict[str, Any]
) -> None:
    command = [
        "beat", "-l", "INFO", "--leaderfeed-heartbeat-interval", "0.3",
        "--leaderfeed-election-timeout-min", "0.9", "--leaderfeed-election-timeout-max", "1.2",
    ]  # fmt: skip
    beat = runs.start(command, on_redis, ready=BEAT_STARTED).wait_ready(30)
    output = beat.log()
    timing = "heartbeat 0.3 s, election timeout 0.9-1.2 s"
    # The scheduler's own account of the election it joined, and the banner.
    joined = f"beat: leaderfeed scheduler in election '{runs.name}.beat' on "
    assert lines_matching(output, log_line("INFO", joined) + rf".* \(own; {timing}\)"), output
    assert f"({timing}, misfire policy run_once)" in output, output


# -- settings no one reads ------------------------------------------------------------------------


@pytest.mark.celery_workers
def test_a_mistyped_setting_is_warned_about_once_by_a_worker_and_its_beat(
    runs: Runs, on_redis: dict[str, Any]
) -> None:
    worker = runs.start(
        runs.worker("-B"), {**on_redis, "leaderfeed_hearbeat_interval": 0.5}, ready="ready."
    ).wait_ready(30)
    wait_until(lambda: BEAT_STARTED in worker.log(), 30, interval=0.05, message="embedded beat")
    warning = log_line(
        "WARNING",
        "leaderfeed: unknown setting leaderfeed_hearbeat_interval; "
        "did you mean leaderfeed_heartbeat_interval?",
    )
    assert len(lines_matching(worker.log(), warning)) == 1, worker.log()


@pytest.mark.celery_workers
def test_a_standalone_beat_warns_about_a_mistyped_django_setting(
    runs: Runs, on_redis: dict[str, Any]
) -> None:
    django = {f"CELERY_{key.upper()}": value for key, value in on_redis.items()}
    django["CELERY_LEADERFEED_HEARBEAT_INTERVAL"] = 0.5
    beat = runs.start(
        ["beat", "-l", "INFO"], django, ready=BEAT_STARTED, namespace="CELERY"
    ).wait_ready(30)
    warning = log_line(
        "WARNING",
        "leaderfeed: unknown setting CELERY_LEADERFEED_HEARBEAT_INTERVAL; "
        "did you mean CELERY_LEADERFEED_HEARTBEAT_INTERVAL?",
    )
    assert len(lines_matching(beat.log(), warning)) == 1, beat.log()
    assert f"election '{runs.name}.beat'" in beat.log()  # the namespaced settings were read


# -- in-process stores ----------------------------------------------------------------------------


@pytest.mark.celery_workers
def test_a_worker_with_embedded_beat_refuses_an_in_process_store(runs: Runs) -> None:
    conf = {**nothing_listens(), "leaderfeed_backend": f"memory://{runs.name}"}
    status, output = runs.run_to_exit(runs.worker("-B"), conf)
    assert status == 1, output
    assert "Traceback" not in output, output
    expected = (
        f"Error: leaderfeed: leaderfeed_backend memory://{runs.name} keeps the election inside "
        "this worker process, and -B runs beat in another process that cannot see it: use a "
        "store that processes share (redis://, postgresql://, mongodb://, rethinkdb://)"
    )
    assert [line for line in output.splitlines() if "leaderfeed" in line] == [expected]


IN_WORKER = (
    "leaderfeed: leaderfeed_backend memory://{} keeps the election inside each worker process, "
    "so every worker process elects itself leader (fine for a single worker or tests)"
)


@pytest.mark.celery_workers
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="no-beat"),
        # Under -B with a scheduler that does not elect, the store is only the worker's.
        pytest.param(
            ["-B", "--scheduler", "celery.beat:PersistentScheduler"], id="beat-without-election"
        ),
    ],
)
def test_a_worker_warns_once_about_an_in_process_store(
    runs: Runs, on_redis: dict[str, Any], extra: list[str]
) -> None:
    conf = {**on_redis, "leaderfeed_backend": f"memory://{runs.name}"}
    worker = runs.start(runs.worker(*extra), conf, ready="ready.").wait_ready(30)
    warning = log_line("WARNING", IN_WORKER.format(runs.name))
    assert len(lines_matching(worker.log(), warning)) == 1, worker.log()


@pytest.mark.celery_workers
def test_a_standalone_beat_warns_once_about_an_in_process_store(
    runs: Runs, on_redis: dict[str, Any]
) -> None:
    conf = {**on_redis, "leaderfeed_backend": f"memory://{runs.name}"}
    beat = runs.start(["beat", "-l", "INFO"], conf, ready=BEAT_STARTED).wait_ready(30)
    warning = log_line(
        "WARNING",
        f"leaderfeed: leaderfeed_backend memory://{runs.name} keeps this beat's election inside "
        "its process: another beat cannot see it and would send every run too (fine for one "
        "beat or tests)",
    )
    assert len(lines_matching(beat.log(), warning)) == 1, beat.log()


# -- the Celery layer without Celery --------------------------------------------------------------

WITHOUT_CELERY = [
    pytest.param("celery", "from celery_leaderfeed import leader_only", id="leader_only"),
    pytest.param("celery", "from celery_leaderfeed import install", id="install"),
    pytest.param("celery", "import celery_leaderfeed; celery_leaderfeed.LeaderFeedStep", id="step"),
    pytest.param("celery", "import celery_leaderfeed.beat", id="beat"),
    pytest.param("click", "from celery_leaderfeed import install", id="install-without-click"),
    pytest.param(
        "kombu", "from celery_leaderfeed.celery.decorators import leader_only", id="no-kombu"
    ),
]


@pytest.mark.parametrize(("missing", "statement"), WITHOUT_CELERY)
def test_the_celery_layer_without_celery_names_the_extra(missing: str, statement: str) -> None:
    code = f"import sys\nsys.modules[{missing!r}] = None  # as if not installed\n{statement}\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"ImportError: celery-leaderfeed's Celery integration needs {missing!r}, which cannot be "
        "imported ("
    ), result.stderr
    assert last.endswith("): pip install 'celery-leaderfeed[celery]'"), result.stderr
