"""``celery -A tests.celery_apps.config_app ...`` as a user runs it, with its settings in the
environment, and what it printed: the ``runs`` fixture (:class:`Runs`) and patterns for Celery's
log lines. Shared by the tests of mistakes, of the default backend and of PostgreSQL poolers.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workers import CeleryProcess

APP = "tests.celery_apps.config_app"
#: Logged by a beat once it has resolved its settings and joined its election.
BEAT_STARTED = "leaderfeed scheduler in election"
#: What Celery puts in front of a log line: "[2026-01-01 10:00:00,000: WARNING/MainProcess] ".
LOG_PREFIX = r"\[[^\]]*: {level}/[A-Za-z-]+\] "


def log_line(level: str, text: str) -> str:
    """A pattern matching one Celery log line at ``level`` whose message is ``text``."""
    return LOG_PREFIX.format(level=level) + re.escape(text)


def lines_matching(output: str, pattern: str) -> list[str]:
    return [line for line in output.splitlines() if re.fullmatch(pattern, line)]


class Runs:
    """Starts ``celery -A config_app ...`` processes and cleans up after them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.name = f"bc-{uuid.uuid4().hex[:10]}"
        self.started: list[CeleryProcess] = []

    def start(
        self,
        command: list[str],
        conf: dict[str, Any],
        *,
        ready: str | None = None,
        namespace: str | None = None,
    ) -> CeleryProcess:
        env = {"LEADERFEED_TEST_CONF": json.dumps(conf)}
        if namespace:
            env["LEADERFEED_TEST_NAMESPACE"] = namespace
        log = self.tmp_path / f"{len(self.started)}-{command[-1] if command else 'celery'}.log"
        process = CeleryProcess(APP, command, log, env=env, ready_marker=ready)
        self.started.append(process)
        return process

    def run_to_exit(self, command: list[str], conf: dict[str, Any]) -> tuple[int, str]:
        """Run to the end; (exit status, everything printed)."""
        process = self.start(command, conf)
        status = process.process.wait(30)
        return status, process.log()

    def worker(self, *extra: str) -> list[str]:
        return [
            "worker", "-P", "solo", "-l", "INFO", "-n", f"{self.name}@localhost",
            "-s", str(self.tmp_path / "schedule"), "--without-gossip", "--without-mingle",
            "--without-heartbeat", *extra,
        ]  # fmt: skip

    def close(self) -> None:
        for process in self.started:
            if process.process.poll() is None:
                process.terminate()
            process.stop()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    started = Runs(tmp_path)
    yield started
    started.close()
