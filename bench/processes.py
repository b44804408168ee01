"""Every process the bench starts, so that all of them are stopped - also on Ctrl-C or errors.

Processes are started in a session of their own (signals reach only what they are aimed at)
and remembered with their descendants as :class:`psutil.Process` handles, which check the
start time before signalling, so a reused PID is never hit. :func:`stop_all` continues and
then kills whatever is left, children orphaned by a ``kill -9`` included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from bench.environment import REPO
from tests.helpers import wait_until

T = TypeVar("T")

_known: dict[int, psutil.Process] = {}


def bench_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: the repository importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class Proc:
    """One started process and its log file."""

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        label: str = "",
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.label = label or Path(command[0]).name
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=bench_env(env),
                cwd=REPO,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        self.handle = psutil.Process(self.popen.pid)
        _known[self.popen.pid] = self.handle

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def family(self) -> list[psutil.Process]:
        """This process and its descendants, remembered for the final clean-up."""
        found = [self.handle] if self.alive() else []
        with contextlib.suppress(psutil.Error):
            found += self.handle.children(recursive=True)
        for process in found:
            _known.setdefault(process.pid, process)
        return found

    def signal(self, sig: signal.Signals, *, family: bool = False) -> float:
        """Send ``sig`` (to descendants too with ``family``); the monotonic time it was sent."""
        targets = self.family() if family else [self.handle]
        sent = time.monotonic()
        for process in targets:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        return sent

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 0.0) -> None:
        """SIGTERM and ``grace`` seconds to exit (0: none), then SIGKILL of the whole family."""
        family = self.family()
        for process in family:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGCONT)
        if grace > 0 and self.alive():
            with contextlib.suppress(psutil.Error):
                self.handle.send_signal(signal.SIGTERM)
            self.wait(grace)
        for process in family:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(family, timeout=10)
        self.wait(10)


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def known_pids() -> list[int]:
    """PIDs of every process the bench started or saw descend from one."""
    return list(_known)


def remember_family(pid: int) -> None:
    """Remember the descendants of ``pid`` (call before killing it)."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            _known.setdefault(child.pid, child)


def stop_all() -> None:
    """Kill every process this bench started that still runs, descendants included."""
    for process in list(_known.values()):
        with contextlib.suppress(psutil.Error):
            for child in process.children(recursive=True):
                _known.setdefault(child.pid, child)
    alive = []
    for process in _known.values():
        with contextlib.suppress(psutil.Error):
            if process.is_running():
                process.send_signal(signal.SIGCONT)
                process.kill()
                alive.append(process)
    psutil.wait_procs(alive, timeout=10)
    _known.clear()


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.005
) -> T:
    """The tests' deadline poll, failing with TimeoutError (a trial the bench may abort)."""
    try:
        return wait_until(condition, timeout, interval=interval, message=what)  # type: ignore[return-value]
    except AssertionError as exc:
        raise TimeoutError(str(exc)) from None
