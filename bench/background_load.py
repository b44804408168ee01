"""How busy the machine was with work the bench did not start, while a part ran.

The machine may be shared (other test runs, services), and on 2 cores that moves tails. A
thread samples every process every 2 s with psutil and adds up the CPU time of the processes
that are neither the bench nor one of its descendants nor a process the bench started
(``bench/processes.py`` remembers those, orphans included). The result, in % of one core,
is printed beside the figures of the part, with the load average at its start and end.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from types import TracebackType
from typing import Any

import psutil

from bench import processes

INTERVAL = 2.0


class BackgroundLoad:
    """``with BackgroundLoad() as load: ...``, then ``load.summary()``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)
        self._seen: dict[tuple[int, float], float] = {}
        self._foreign = 0.0
        self._began = 0.0
        self._ended = 0.0
        self._load_before = os.getloadavg()
        self._load_after = self._load_before

    def __enter__(self) -> BackgroundLoad:
        self._began = time.monotonic()
        self._load_before = os.getloadavg()
        self._sample(count=False)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample(count=True)
        self._ended = time.monotonic()
        self._load_after = os.getloadavg()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._sample(count=True)

    def _ours(self) -> set[int]:
        me = psutil.Process()
        pids = {me.pid} | set(processes.known_pids())
        with contextlib.suppress(psutil.Error):
            pids |= {child.pid for child in me.children(recursive=True)}
        return pids

    def _sample(self, *, count: bool) -> None:
        ours = self._ours()
        for process in psutil.process_iter(["pid", "create_time", "cpu_times"]):
            info: dict[str, Any] = process.info
            times = info.get("cpu_times")
            if times is None:
                continue
            key = (info["pid"], info["create_time"] or 0.0)
            used = times.user + times.system
            before = self._seen.get(key)
            self._seen[key] = used
            if not count or info["pid"] in ours:
                continue
            # A process first seen now ran partly before the part: count from its first sample
            # only if it started during the part.
            if before is None:
                started = info["create_time"] or 0.0
                before = 0.0 if started >= time.time() - INTERVAL else used
            self._foreign += max(0.0, used - before)

    def summary(self) -> dict[str, Any]:
        elapsed = max(1e-9, self._ended - self._began)
        return {
            "other_processes_cpu_pct": round(100 * self._foreign / elapsed, 1),
            "load_average_before": [round(x, 2) for x in self._load_before],
            "load_average_after": [round(x, 2) for x in self._load_after],
        }
