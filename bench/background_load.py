"""CPU used, while a part runs, by processes the bench neither is nor started.

The machine may be shared, and on 2 cores that moves the tails; the page prints this beside
every figure. A thread samples every process's CPU time every 2 s.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import psutil

from bench.processes import known_pids

INTERVAL = 2.0


class BackgroundLoad:
    """``with BackgroundLoad() as load: ...``, then ``load.summary()``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)
        self._seen: dict[tuple[int, float], float] = {}
        self._foreign = 0.0
        self._began = self._ended = time.monotonic()
        self._load = [os.getloadavg()] * 2

    def __enter__(self) -> BackgroundLoad:
        self._began, self._load[0] = time.monotonic(), os.getloadavg()
        self._sample(count=False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample(count=True)
        self._ended, self._load[1] = time.monotonic(), os.getloadavg()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._sample(count=True)

    def _ours(self) -> set[int]:
        me = psutil.Process()
        pids = {me.pid} | known_pids()
        with contextlib.suppress(psutil.Error):
            pids |= {child.pid for child in me.children(recursive=True)}
        return pids

    def _sample(self, *, count: bool) -> None:
        ours = self._ours()
        for process in psutil.process_iter(["pid", "create_time", "cpu_times"]):
            info: dict[str, Any] = process.info
            if info.get("cpu_times") is None:
                continue
            started = info["create_time"] or 0.0
            used = info["cpu_times"].user + info["cpu_times"].system
            before = self._seen.get((info["pid"], started))
            self._seen[(info["pid"], started)] = used
            if not count or info["pid"] in ours:
                continue
            if before is None:  # first seen now: count it all only if it started meanwhile
                before = 0.0 if started >= time.time() - INTERVAL else used
            self._foreign += max(0.0, used - before)

    def summary(self) -> dict[str, Any]:
        elapsed = max(1e-9, self._ended - self._began)
        return {
            "other_processes_cpu_pct": round(100 * self._foreign / elapsed, 1),
            "load_average_before": [round(x, 2) for x in self._load[0]],
            "load_average_after": [round(x, 2) for x in self._load[1]],
        }
