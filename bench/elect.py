"""``celery leaderfeed elect NODE``: from the command to NODE leading, on three idle workers.

Each trial runs the command in-process (click's runner with the bench app, so no interpreter
start-up is counted) naming a worker that does not lead, and takes the time the command itself
reports: from its start - the broker round trips to NODE and to the leader, the leader's
hand-over, NODE's claim - to the store showing NODE as the holder. The method: bench/README.md
(section "Planned handover").
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from bench.processes import Proc, python, wait_for
from bench.stats import summary

#: "w2@host leads election 'x' (term 7; was w1@host; 0.031 s)"
_ELAPSED = re.compile(r"leads election .* \(term \d+(?:; was [^;]+)?; ([0-9.]+) s\)")


def run(redis_url: str, trials: int, workdir: Path) -> dict[str, Any]:
    from click.testing import CliRunner

    from celery_leaderfeed.backends import backend_from_url

    name = f"el-{uuid.uuid4().hex[:8]}"
    os.environ.update({"BENCH_REDIS_URL": redis_url, "BENCH_NAME": name})
    from bench.leader_only_app import app  # configured from the environment just set
    from celery_leaderfeed.celery.cli import leaderfeed

    nodes = [f"{name}-{index}@bench" for index in range(3)]

    def command(node: str) -> list[str]:
        return python(
            "-m", "celery", "-A", "bench.leader_only_app", "worker", "-P", "threads", "-c", "1",
            "-n", node, "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        )  # fmt: skip

    env = {"BENCH_REDIS_URL": redis_url, "BENCH_NAME": name}
    workers = [Proc(command(node), workdir / f"{node}.log", env) for node in nodes]
    store = backend_from_url(redis_url, name=name, timeout=2.0)
    store.connect()

    def holder() -> str | None:
        record = store.read().record
        return None if record is None else record.holder

    try:
        for worker in workers:
            wait_for(lambda w=worker: "ready." in w.log(), 60, "a worker to start", 0.05)
        # A first leader over an empty store acts only an election timeout after its claim:
        # trials start once it does, so they measure hand-overs, not that wait.
        wait_for(lambda: any("became leader" in w.log() for w in workers), 30, "a leader", 0.02)
        runner = CliRunner()
        samples: list[float] = []
        for _ in range(trials):
            leader = holder()
            node = next(n for n in nodes if n != leader)
            result = runner.invoke(leaderfeed, ["elect", node], obj=_Context(app))
            found = _ELAPSED.search(result.output)
            if result.exit_code != 0 or found is None:
                raise RuntimeError(f"elect {node} failed: {result.output.strip()}")
            samples.append(float(found.group(1)))
        settings = {"workers": 3, "pool": "threads"}
        return {"settings": settings, "samples": samples, "summary": summary(samples)}
    finally:
        store.close()
        for worker in workers:
            worker.stop()


class _Context:
    """What ``celery -A app`` hands its subcommands as ``ctx.obj``."""

    def __init__(self, app: Any) -> None:
        self.app = app
