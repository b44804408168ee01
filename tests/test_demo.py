"""``python -m example_project.demo`` explains a failure at once, as a user running it sees it.

The demo runs as a subprocess with a broken environment and its output is read: it must stop
within seconds (not wait out its 60 s start timeout), exit 2, print the last lines of the log
that says what went wrong, and keep that log instead of deleting it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Far below the demo's 60 s wait for a node to start: a failure must be noticed as it happens.
QUICK = 20.0


def run_demo(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    full_env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    full_env.update(TMPDIR=str(tmp_path), **env)  # the demo's log directory lands in tmp_path
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "example_project.demo"],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, time.monotonic() - started


def kept_logs(output: str) -> Path:
    match = re.search(r"all logs are kept in (\S+)", output)
    assert match, output
    return Path(match[1])


@pytest.mark.celery_workers
def test_a_node_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # The failure of the issue: kombu's Redis transport cannot import `packaging`, so every
    # node dies at start. A package of that name that fails to import stands in for it.
    shadow = tmp_path / "shadow" / "packaging"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'packaging'\", name='packaging')\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))

    result, took = run_demo(tmp_path, PYTHONPATH=pythonpath)

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert took < QUICK, f"took {took:.1f} s:\n{output}"
    died = re.search(r"demo aborted: (node\d) exited with status 1", output)
    assert died, output
    assert re.search(rf"--- last lines of \S+/{died[1]}\.log ---", output), output
    assert "ModuleNotFoundError: No module named 'packaging'" in output, output
    assert "kombu/transport/redis.py" in output, output  # the tail shows where it failed
    logs = kept_logs(output)
    # The node that died first is the one reported (the others may not have written yet).
    assert "No module named 'packaging'" in (logs / f"{died[1]}.log").read_text()


def test_a_redis_server_that_fails_to_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # A real redis-server, handed a directive it rejects.
    real = shutil.which("redis-server")
    assert real, "redis-server is needed (apt-get install -y redis-server)"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "redis-server"
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@" --no-such-directive yes\n')
    wrapper.chmod(0o755)

    result, took = run_demo(tmp_path, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert took < QUICK, f"took {took:.1f} s:\n{output}"
    assert "demo aborted: redis-server exited with status 1" in output, output
    assert "--- last lines of" in output and "redis-server.log ---" in output, output
    assert "FATAL CONFIG FILE ERROR" in output, output
    assert "no-such-directive" in (kept_logs(output) / "redis-server.log").read_text()
    assert "starting node1" not in output, output  # no node was started without a store
