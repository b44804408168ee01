"""The Prometheus endpoint's cost to an idle worker at a 15 s scrape interval. The method:
bench/README.md (section "Metrics endpoint")."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench.processes import Proc, python, wait_for
from harness.helpers import free_port

#: The scrape interval the target is stated at (Prometheus' default is 60 s; 15 s is common).
SCRAPE_INTERVAL = 15.0


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _thread_cpu(process: psutil.Process) -> float:
    """CPU seconds of the live threads of ``process``, to the nanosecond (``schedstat``), where
    ``cpu_times`` counts clock ticks (10 ms). Only for processes whose threads do not exit."""
    total = 0
    for stat in Path(f"/proc/{process.pid}/task").glob("*/schedstat"):
        total += int(stat.read_text().split()[0])
    return total / 1e9


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return bytes(response.read())


def _rate(
    process: psutil.Process, seconds: float, every: float | None = None, port: int = 0
) -> float:
    """CPU seconds per second of ``process`` over ``seconds`` (scraping it ``every`` s)."""
    began_cpu, began = _cpu(process), time.monotonic()
    next_scrape = began
    while (now := time.monotonic()) < began + seconds:
        if every is not None and now >= next_scrape:
            _scrape(port)
            next_scrape += every
        time.sleep(min(0.5, max(0.0, began + seconds - now)))  # a measuring window, not a wait
    return (_cpu(process) - began_cpu) / (time.monotonic() - began)


def run(redis_url: str, window: float, burst: int, workdir: Path) -> dict[str, Any]:
    name = f"me-{uuid.uuid4().hex[:8]}"
    port, bare_port = free_port(), free_port()
    env = {"BENCH_REDIS_URL": redis_url, "BENCH_NAME": name}
    command = python(
        "-m", "celery", "-A", "bench.leader_only_app", "worker", "-P", "prefork", "-c", "2",
        "-n", f"{name}@%h", "-l", "INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--leaderfeed-metrics-port", str(port),
    )  # fmt: skip
    worker = Proc(command, workdir / f"{name}.log", env)
    # The endpoint alone, in a process that does nothing else, and the same process without it.
    idle = Proc(python("-m", "bench.metrics_idle", str(bare_port)), workdir / f"{name}-idle.log")
    empty = Proc(python("-m", "bench.metrics_idle", "0"), workdir / f"{name}-empty.log")
    try:
        wait_for(lambda: "became leader" in worker.log(), 60, "the worker to lead", 0.05)
        wait_for(lambda: "serving" in idle.log() and "serving" in empty.log(), 30, "idle", 0.05)
        text = _scrape(port)
        samples = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        time.sleep(2.0)  # let start-up work end before measuring (a settling pause, not a wait)

        # 1. The idle worker, scraped every 15 s: its main process's CPU (context).
        worker_rate = _rate(worker.handle, window, SCRAPE_INTERVAL, port)
        # 2. The endpoint's thread while nobody scrapes: a process with it vs one without.
        idle_began = (_thread_cpu(idle.handle), _thread_cpu(empty.handle), time.monotonic())
        time.sleep(window)  # the measuring window
        spent = time.monotonic() - idle_began[2]
        idle_rate = (_thread_cpu(idle.handle) - idle_began[0]) / spent
        empty_rate = (_thread_cpu(empty.handle) - idle_began[1]) / spent
        # 3. One scrape of the real worker: a burst, less the worker's own rate meanwhile.
        base = _rate(worker.handle, 5.0)
        began_cpu, began = _cpu(worker.handle), time.monotonic()
        for _ in range(burst):
            _scrape(port)
        took = time.monotonic() - began
        per_scrape = max(0.0, (_cpu(worker.handle) - began_cpu - base * took) / burst)
    finally:
        worker.stop(grace=15)
        idle.stop()
        empty.stop()
    endpoint_idle = max(0.0, idle_rate - empty_rate)
    added = endpoint_idle + per_scrape / SCRAPE_INTERVAL
    return {
        "settings": {
            "pool": "prefork, concurrency 2",
            "scrape_interval_s": SCRAPE_INTERVAL,
            "window_s": window,
            "burst": burst,
            "samples_per_scrape": samples,
            "bytes_per_scrape": len(text),
        },
        "worker_cpu_pct_scraped": 100 * worker_rate,
        "endpoint_idle_cpu_pct": 100 * endpoint_idle,
        "process_with_endpoint_cpu_pct": 100 * idle_rate,
        "process_without_endpoint_cpu_pct": 100 * empty_rate,
        "per_scrape_cpu_s": per_scrape,
        "scrape_wall_s": took / burst,
        "worker_base_cpu_pct": 100 * base,
        "added_cpu_pct": 100 * added,
    }
