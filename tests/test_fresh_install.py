"""The README's install, in a brand-new virtualenv, runs a worker that leads.

A worker's dependencies are easy to get wrong unseen: the development machine has every package
already, so a missing one (kombu's Redis transport needs ``kombu[redis]``) shows only on a clean
machine. This test builds a venv that has only what the README's first command installs - the
extras are read from README.md, so the test follows it - and starts a real ``celery worker``
from that venv against the tests' redis-server. CI's lock is a constraint file: it fixes
versions but installs nothing by itself, so it cannot hide a missing dependency.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_leaderfeed.backends import backend_from_url
from harness.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "ci.txt"


def readme_extras() -> str:
    """The extras of the install in README.md's first command, e.g. ``redis,celery``."""
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```console\n(.*?)\n```", readme, re.DOTALL)
    assert first, "README.md has no console block"
    install = re.search(r"pip install -e '\.\[([\w,-]+)\]'", first[1])
    assert install, f"no `pip install -e '.[...]'` in README's first command: {first[1]}"
    return install[1]


def isolated_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that could lend the venv a package."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_CONSTRAINT"}
    }
    env["PYTHONNOUSERSITE"] = "1"  # no ~/.local site-packages either
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "-e", f".[{readme_extras()}]"],
        cwd=ROOT,
        env=isolated_env(PIP_CONSTRAINT=str(LOCK), PIP_DISABLE_PIP_VERSION_CHECK="1"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return venv


@pytest.fixture
def worker_log(tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    yield log
    if log.exists():
        print(log.read_text(errors="replace")[-4000:])  # shown when the test failed


@pytest.mark.celery_workers
def test_readme_install_in_a_fresh_venv_runs_a_worker_that_leads(
    fresh_venv: Path, redis_url: str, worker_log: Path
) -> None:
    name = f"fresh-{uuid.uuid4().hex[:8]}"
    node = f"fresh@{socket.gethostname()}"
    command = [str(fresh_venv / "bin" / "python"), "-m", "celery", "-A", "example_project.proj"]
    command += ["worker", "-n", node, "-P", "threads", "-c", "1", "-l", "INFO"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    env = isolated_env(PYTHONPATH=str(ROOT), REDIS_URL=redis_url, PROJ_NAME=name)
    with worker_log.open("ab") as log:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    store = backend_from_url(redis_url, name=name, timeout=2.0)
    store.connect()
    try:

        def ready() -> bool:
            assert worker.poll() is None, f"the worker exited with {worker.returncode}"
            return "ready." in worker_log.read_text(errors="replace")

        wait_until(ready, 60, interval=0.05, message="the worker to be ready")

        def leads() -> bool:
            assert worker.poll() is None, f"the worker exited with {worker.returncode}"
            record = store.read().record
            return record is not None and record.holder == node

        wait_until(leads, 30, interval=0.05, message=f"{node} to lead")
    finally:
        store.close()
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
