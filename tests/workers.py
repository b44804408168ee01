"""Real ``celery worker`` / ``celery beat`` processes for the tests, started and killed by PID.

Readiness is read from the process's own log ("ready." for a worker), never guessed with a
sleep. Logs go to a file per process so a failing test can show them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

from harness.helpers import wait_until

REPO = Path(__file__).resolve().parent.parent


class CeleryProcess:
    """One ``celery -A APP <command>`` subprocess with its log file."""

    def __init__(
        self,
        app: str,
        command: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_marker: str | None = "ready.",
    ) -> None:
        self.app = app
        self.command = list(command)
        self.log_path = log_path
        self.ready_marker = ready_marker
        full_env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        full_env.update(env or {})
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, *self.command],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=REPO,
            start_new_session=True,  # our signals reach only what we aim at
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> CeleryProcess:
        if self.ready_marker is None:
            return self

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"celery exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            return self.ready_marker in self.log()  # type: ignore[operator]

        wait_until(ready, timeout, interval=0.02, message=f"{self.command} ready")
        return self

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def send(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """kill -9 the main process only (children are left to notice, as in production)."""
        self.send(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (warm shutdown) and wait for the exit."""
        self.send(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Clean up whatever is left: the process and every descendant."""
        family = self.children()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(family, timeout=10)
        self._log.close()


def wait_gone(pid: int, timeout: float) -> None:
    """Wait until ``pid`` no longer exists (or is a zombie)."""

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout, interval=0.02, message=f"process {pid} gone")
