"""Every process the bench starts, remembered so that all of them are stopped at the end.

Each runs in a session of its own, so a signal reaches only what it is aimed at; psutil handles
check the start time before signalling, so a reused PID is never hit.
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
from typing import Any, TypeVar

import psutil

from harness.helpers import wait_until

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent

#: Every process started, and every descendant seen, by PID.
_known: dict[int, psutil.Process] = {}


class Proc:
    """One started process, logging stdout and stderr to ``log_path``."""

    def __init__(
        self, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        environ = {**os.environ, **(env or {})}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.getenv("PYTHONPATH")]))
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                list(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=environ, cwd=REPO, start_new_session=True,
            )  # fmt: skip
        self.started_at = time.monotonic()
        self.pid = self.popen.pid
        self.handle = _known[self.pid] = psutil.Process(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def family(self) -> list[psutil.Process]:
        """This process and its descendants (remembered for the final clean-up)."""
        found = [self.handle] if self.alive() else []
        with contextlib.suppress(psutil.Error):
            found += self.handle.children(recursive=True)
        for process in found:
            _known.setdefault(process.pid, process)
        return found

    def signal(self, sig: signal.Signals, *, family: bool = False) -> float:
        """Send ``sig`` (to the descendants too with ``family``); the monotonic time sent."""
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
        if grace > 0 and self.alive():
            self.signal(signal.SIGCONT, family=True)
            self.signal(signal.SIGTERM)
            self.wait(grace)
        _kill(family)
        self.wait(10)


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGCONT)  # a stopped process dies only once continued
            process.kill()
    psutil.wait_procs(processes, timeout=10)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def known_pids() -> set[int]:
    return set(_known)


def stop_all() -> None:
    """Kill every process the bench started that still runs, orphaned descendants included."""
    for process in list(_known.values()):
        with contextlib.suppress(psutil.Error):
            for child in process.children(recursive=True):
                _known.setdefault(child.pid, child)
    _kill([p for p in _known.values() if p.is_running()])
    _known.clear()


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.005
) -> T:
    """The harness's deadline poll, failing with TimeoutError (a trial the bench may abort)."""
    try:
        return wait_until(condition, timeout, interval=interval, message=what)  # type: ignore[return-value]
    except AssertionError as exc:
        raise TimeoutError(str(exc)) from None


def attempt(label: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure is recorded with its reason (the page: "not measured")."""
    print(f"  {label}", flush=True)
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - any failure is a result to report
        print(f"    FAILED: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}
