"""What a figure was measured on: machine, kernel, versions of everything involved, and when.

Read from ``lscpu`` / ``/proc/cpuinfo``, ``/proc/meminfo``, ``uname``, installed package
metadata and ``redis-server --version``; nothing is guessed. The git commit of the package
under test is included, with ``+dirty`` when the working tree has uncommitted changes.
"""

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

REPO = Path(__file__).resolve().parent.parent

#: Distribution name -> how the docs call it.
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
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    for line in _run("lscpu").splitlines():
        if line.startswith("Model name:"):
            return line.partition(":")[2].strip()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def hypervisor() -> str | None:
    for line in _run("lscpu").splitlines():
        if line.startswith("Hypervisor vendor:"):
            return line.partition(":")[2].strip()
    return None


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def redis_server_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    found = re.search(r"v=(\S+)", _run(binary, "--version"))
    return found.group(1) if found else "unknown"


def git_commit() -> str:
    commit = _run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    dirty = _run("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    untracked = _run("git", "-C", str(REPO), "status", "--porcelain", "celery_leaderfeed")
    return commit + ("+dirty" if dirty or untracked else "")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "redis-server": redis_server_version()}
    for distribution, label in PACKAGES.items():
        try:
            found[label] = version(distribution)
        except PackageNotFoundError:
            found[label] = "not installed"
    return found


def describe() -> dict[str, Any]:
    """Machine, versions and date of this run."""
    return {
        "date": now_utc(),
        "machine": {
            "cpu": cpu_model(),
            "hypervisor": hypervisor(),
            "cores": os.cpu_count(),
            "memory_gib": memory_gib(),
            "kernel": platform.release(),
            "os": _os_name(),
        },
        "versions": versions(),
        "commit": git_commit(),
        "python_executable": sys.executable,
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass
    return platform.system()
