"""Real ``celery worker -B`` / ``celery beat`` clusters sending a 0.5 s periodic task, and what
their sends came to, for the tests of every leader-gated scheduler.

Each cluster runs its own election and queues on the session Redis, with short timings
(heartbeat 0.2 s, election timeout 0.6-0.9 s). A never-faulted recorder worker (in an election of
its own, without beat) runs the task, so a run cannot be lost with a killed worker's prefetched
messages. The task body records each *execution* - its occurrence id, coalesced list, term and
sender - in a Redis list, and :mod:`harness.occurrence_checker` judges the executions. The
election's store (record, schedule state, once-only marks) is the session Redis unless the
settings name another (``leaderfeed_backend``); :meth:`BeatCluster.holder` reads that one.
"""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import redis

from celery_leaderfeed.backends import backend_from_url
from harness.helpers import wait_until
from harness.occurrence_checker import Report, Send, check
from tests.workers import CeleryProcess

APP = "tests.celery_apps.beat_app"
PERIOD = 0.5
TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}


def figure(name: str, value: object) -> None:
    """A measured figure, printed for ``pytest -s`` runs."""
    shown = f"{value:.3f} s" if isinstance(value, float) else value
    print(f"\n[leaderfeed beat] {name}: {shown}")


class BeatCluster:
    """Beat-sending workers of one election, a recorder worker, and what the task recorded."""

    def __init__(
        self,
        redis_url: str,
        tmp_path: Path,
        *,
        app: str = APP,
        scheduler: str = "leaderfeed",
        env: dict[str, str] | None = None,
        conf: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.scheduler = scheduler
        #: Extra environment and settings of every process (a test's database, its scheduler).
        self.extra_env = dict(env or {})
        self.extra_conf = dict(conf or {})
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.name = f"bt-{uuid.uuid4().hex[:10]}"
        self.runs_key = f"leaderfeed-test:{self.name}:runs"
        self.pulse_queue = f"{self.name}.pulses"
        self.redis = redis.Redis.from_url(redis_url)
        # The election's own store, as the processes resolve it: `leaderfeed_backend` if the
        # test sets one (PostgreSQL, a Sentinel group), else the broker, the session Redis.
        self.store_url = str(self.extra_conf.get("leaderfeed_backend") or redis_url)
        options = self.extra_conf.get("leaderfeed_backend_options")
        self.store = backend_from_url(self.store_url, name=self.name, timeout=2.0, options=options)
        self.beat_store = backend_from_url(
            self.store_url, name=f"{self.name}.beat", timeout=2.0, options=options
        )
        self.store.connect()
        self.beat_store.connect()
        self.processes: dict[str, CeleryProcess] = {}
        #: Every process we started, children included (psutil refuses a reused PID).
        self.family: list[psutil.Process] = []

    def env(self, **conf: Any) -> dict[str, str]:
        settings = {
            "broker_url": self.redis_url,
            "leaderfeed_name": self.name,
            "task_default_queue": f"{self.name}.idle",
            "beat_schedule": {
                "pulse": {
                    "task": "beat_app.pulse",
                    "schedule": PERIOD,
                    "options": {"queue": self.pulse_queue},
                }
            },
            **TIMING,
            **self.extra_conf,
            **conf,
        }
        return {
            **self.extra_env,
            "LEADERFEED_TEST_CONF": json.dumps(settings),
            "LEADERFEED_TEST_KEY": self.runs_key,
            "LEADERFEED_TEST_PERIOD": str(PERIOD),
        }

    def hostname(self, node: str) -> str:
        return f"{node}.{self.name}@localhost"

    def _spawn(self, node: str, command: list[str], ready: str, **conf: Any) -> CeleryProcess:
        process = CeleryProcess(
            self.app,
            command,
            self.tmp_path / f"{node}.log",
            env=self.env(**conf),
            ready_marker=ready,
        )
        self.processes[node] = process
        self.family.append(psutil.Process(process.pid))
        return process

    def start_workers(self, nodes: Sequence[str], *, beat: bool = True) -> None:
        started = [self.recorder()] if "recorder" not in self.processes else []
        for node in nodes:
            command = [
                "worker", "-l", "INFO", "-n", self.hostname(node), "-P", "threads", "-c", "2",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]  # fmt: skip
            started.append(self._spawn(node, [*command, "-B"] if beat else command, "ready."))
        for process in started:
            process.wait_ready(30)
            self.family.extend(process.children())

    def recorder(self) -> CeleryProcess:
        command = [
            "worker", "-l", "INFO", "-n", self.hostname("recorder"), "-Q", self.pulse_queue,
            "-P", "threads", "-c", "4", "--leaderfeed-name", f"{self.name}-recorder",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        return self._spawn("recorder", command, "ready.")

    def start_beats(self, nodes: Sequence[str]) -> None:
        for node in nodes:
            command = ["beat", "-S", self.scheduler, "-l", "INFO"]
            self._spawn(node, command, "leaderfeed scheduler in election")
        for node in nodes:
            self.processes[node].wait_ready(30)

    def close(self) -> None:
        for process in self.processes.values():
            self.family.extend(process.children())
            process.stop()
        for member in self.family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(self.family, timeout=10)
        for key in self.redis.scan_iter(match=f"*{self.name}*"):
            self.redis.delete(key)
        self.store.close()
        self.beat_store.close()
        self.redis.close()

    # -- what happened ---------------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(self.runs_key, 0, -1)]

    def sends(self) -> list[Send]:
        """Every execution of the task, as its body recorded it (one record per body run)."""
        return [
            Send(run["occurrence"], tuple(run["coalesced"]), run["term"], run["sender"], run["at"])
            for run in self.runs()
        ]

    def beat_pid(self, node: str) -> int:
        """PID of the embedded beat child of worker ``node`` (it records its start)."""
        parent = self.processes[node].pid

        def found() -> int | None:
            for raw in self.redis.lrange(f"{self.runs_key}:beats", 0, -1):
                beat = json.loads(raw)
                if beat["ppid"] == parent:
                    return int(beat["pid"])
            return None

        return wait_until(found, 10, interval=0.02, message=f"beat child of {node}")

    def holder(self, store: Any = None) -> tuple[str | None, int | None]:
        record = (store or self.store).read().record
        return (None, None) if record is None else (record.holder, record.term)

    def wait_more_runs(self, count: int, timeout: float = 15.0, **match: Any) -> None:
        """Wait until ``count`` more runs (matching ``match``) were recorded than now."""

        def matching() -> int:
            return sum(all(run.get(k) == v for k, v in match.items()) for run in self.runs())

        target = matching() + count
        wait_until(lambda: matching() >= target, timeout, interval=0.02, message=f"{match}")

    def wait_leader_sending(self, candidates: Sequence[str]) -> str:
        """The node whose beat sends, once it has sent a few runs."""
        hosts = {self.hostname(node): node for node in candidates}

        def sender() -> str | None:
            runs = [run for run in self.runs() if run["sender"] in hosts]
            return hosts[runs[-1]["sender"]] if len(runs) >= 3 else None

        return wait_until(sender, 20, interval=0.02, message="a leader sending")

    def settled_report(self) -> Report:
        """Stop every sender, let the recorder drain the queue, then judge the sends."""
        self.settle()
        return check(self.sends(), timedelta(seconds=PERIOD))

    def settle(self) -> None:
        """Stop every sender and let the recorder drain the queue."""
        for node, process in self.processes.items():
            if node != "recorder" and process.process.poll() is None:
                process.send(signal.SIGTERM)
        for node, process in self.processes.items():
            if node != "recorder":
                process.process.wait(30)
        previous = [-1]

        def settled() -> bool:
            """Queue empty and no new run since the last poll: nothing is in flight."""
            count = len(self.runs())
            quiet = count == previous[0] and self.redis.llen(self.pulse_queue) == 0
            previous[0] = count
            return quiet

        wait_until(settled, 10, interval=0.3, message="the recorder drained the queue")


def assert_clean(report: Report, cluster: BeatCluster) -> None:
    logs = {node: process.log()[-3000:] for node, process in cluster.processes.items()}
    assert report.ok, f"{report.summary()}\n{report.table()}\n{logs}"


def show(fault: str, report: Report) -> None:
    """Print how the occurrences were covered across ``fault``."""
    coalesced = sum(
        1
        for occurrence, sends in report.coverage.items()
        for send in sends
        if send.occurrence != occurrence
    )
    per_occurrence = sorted({len(sends) for sends in report.coverage.values()})
    figure(
        f"{fault}: sends per occurrence",
        f"{'/'.join(map(str, per_occurrence))} ({report.summary()}; {coalesced} coalesced)",
    )
