"""What a figure was measured on: machine, versions, commit and date, read, never guessed."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.processes import REPO

#: Distribution name -> how the page names it.
PACKAGES = {
    "celery-leaderfeed": "celery-leaderfeed",
    "celery": "celery",
    "kombu": "kombu",
    "billiard": "billiard",
    "redis": "redis-py",
    "pymongo": "pymongo",
    "SecantusDB": "SecantusDB",
    "rethinkdb": "rethinkdb driver",
    "celery-redbeat": "celery-redbeat",
    "single-beat": "single-beat",
    "psutil": "psutil",
    "matplotlib": "matplotlib",
}


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _field(text: str, name: str, separator: str = ":") -> str | None:
    """The value of the first ``name<separator>value`` line of ``text``."""
    for line in text.splitlines():
        if line.startswith(name):
            return line.partition(separator)[2].strip().strip('"')
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    found = re.search(r"v=(\S+)", _run(binary, "--version"))
    return found.group(1) if found else "unknown"


def _commit() -> str:
    """The short commit of the code under test, ``+dirty`` with uncommitted changes."""
    commit = _run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD") or "unknown"
    dirty = _run("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    untracked = _run("git", "-C", str(REPO), "status", "--porcelain", "celery_leaderfeed")
    return commit + ("+dirty" if dirty or untracked else "")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "redis-server": _redis_server()}
    for distribution, label in PACKAGES.items():
        try:
            found[label] = version(distribution)
        except PackageNotFoundError:
            found[label] = "not installed"
    return found


def describe() -> dict[str, Any]:
    """Machine, versions, commit and date of this run."""
    lscpu = _run("lscpu")
    memory = _field(_read("/proc/meminfo"), "MemTotal:")
    return {
        "date": now_utc(),
        "machine": {
            "cpu": _field(lscpu, "Model name:")
            or _field(_read("/proc/cpuinfo"), "model name")
            or platform.processor()
            or "unknown",
            "hypervisor": _field(lscpu, "Hypervisor vendor:"),
            "cores": os.cpu_count(),
            "memory_gib": round(int(memory.split()[0]) / 1024**2, 1) if memory else 0.0,
            "kernel": platform.release(),
            "os": _field(_read("/etc/os-release"), "PRETTY_NAME=", "=") or platform.system(),
        },
        "versions": _versions(),
        "commit": _commit(),
        "python_executable": sys.executable,
    }
