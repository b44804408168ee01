"""The nodes of one periodic-runs cluster, the sends they made, and who held leadership.

Every node is a real process started from ``bench/periodic_app.py``:

===============  ==============================================================================
system           one node
===============  ==============================================================================
leaderfeed       ``celery worker -B -P threads -c 1`` (beat is the worker's "Beat" child process)
redbeat          ``celery beat`` with ``redbeat.RedBeatScheduler``
single-beat      ``single-beat celery beat`` (the wrapper starts ``celery beat`` once it holds
                 its lock; each node keeps beat's schedule in a file of its own)
===============  ==============================================================================

Sends are read from the broker's list of the runs queue (which nothing consumes), each with
the publish-time stamp the app adds. For leaderfeed the holder of the leader record is sampled
every 20 ms, for the timeline picture.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis

from bench.inference import Sent
from bench.periodic_app import SINGLE_BEAT_ENV
from bench.processes import Proc, python_command, wait_for
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.errors import BackendUnavailable

#: How each system's node says it is up.
READY_MARKER = {"leaderfeed": " ready.", "redbeat": "beat: Starting...", "single-beat": None}


@dataclass
class Node:
    name: str
    proc: Proc


class PeriodicCluster:
    """Nodes of one system and profile, sharing one election / lock and one runs queue."""

    def __init__(
        self, system: str, profile: str, redis_url: str, workdir: Path, period: float = 1.0
    ) -> None:
        self.system = system
        self.profile = profile
        self.redis_url = redis_url
        self.workdir = workdir
        self.period = period
        self.name = f"pr-{system}-{profile}-{uuid.uuid4().hex[:6]}"
        self.runs_queue = f"{self.name}.runs"
        self.nodes: dict[str, Node] = {}
        self.retired: list[Node] = []
        self.sends: list[Sent] = []
        self.leadership: list[tuple[float, str | None, int | None]] = []
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.snapshots: dict[str, list[psutil.Process]] = {}
        self._seen = 0
        self._count = 0
        self._closed = False
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    # -- nodes -------------------------------------------------------------------------------

    def command(self, node: str) -> list[str]:
        app = ["-m", "celery", "-A", "bench.periodic_app"]
        if self.system == "leaderfeed":
            return python_command(
                *app, "worker", "-B", "-n", f"{node}@%h", "-P", "threads", "-c", "1",
                "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            )  # fmt: skip
        if self.system == "redbeat":
            return python_command(*app, "beat", "-l", "INFO")
        wrapper = shutil.which("single-beat")
        if wrapper is None:
            raise RuntimeError("single-beat is not installed (pip install single-beat)")
        schedule = self.workdir / f"{self.name}-{node}.schedule"
        return [wrapper, *python_command(*app, "beat", "-l", "INFO", "-s", str(schedule))]

    def env(self, node: str) -> dict[str, str]:
        env = {
            "BENCH_SYSTEM": self.system,
            "BENCH_PROFILE": self.profile,
            "BENCH_NAME": self.name,
            "BENCH_NODE": node,
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_PERIOD": str(self.period),
        }
        if self.system == "single-beat":
            env |= {
                "SINGLE_BEAT_REDIS_SERVER": self.redis_url,
                "SINGLE_BEAT_IDENTIFIER": self.name,
                "SINGLE_BEAT_LOG_LEVEL": "info",
                **SINGLE_BEAT_ENV[self.profile],
            }
        return env

    def start_node(self) -> Node:
        self._count += 1
        name = f"n{self._count}"
        log = self.workdir / f"{self.name}-{name}.log"
        node = Node(name, Proc(self.command(name), log, self.env(name), label=name))
        self.nodes[name] = node
        return node

    def wait_ready(self, node: Node, timeout: float = 60.0) -> None:
        marker = READY_MARKER[self.system]
        if marker is None:
            time.sleep(1.0)  # the wrapper says nothing until it holds the lock
            return

        def ready() -> bool:
            if not node.proc.alive():
                raise RuntimeError(f"node {node.name} exited:\n{node.proc.log()[-3000:]}")
            return marker in node.proc.log()

        wait_for(ready, timeout, f"node {node.name} to start", 0.02)

    def start(self, size: int = 3) -> None:
        started = [self.start_node() for _ in range(size)]
        for node in started:
            self.wait_ready(node)
        if self.system == "leaderfeed":
            self._sampler = threading.Thread(target=self._sample_leadership, daemon=True)
            self._sampler.start()

    def retire(self, name: str) -> Node:
        node = self.nodes.pop(name)
        self.retired.append(node)
        return node

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sampling.set()
        if self._sampler is not None:
            self._sampler.join(2)
        for node in [*self.nodes.values(), *self.retired]:
            node.proc.stop()
        self.refresh()
        self._redis.close()

    # -- what happened ---------------------------------------------------------------------------

    def refresh(self) -> list[Sent]:
        """Read the sends published since the last call (the list is never consumed)."""
        raw = self._redis.lrange(self.runs_queue, 0, -(self._seen + 1))
        self._seen += len(raw)
        fresh = [_decode(item) for item in raw]
        self.sends.extend(sorted(fresh, key=lambda s: s.at))
        return self.sends

    def last_send(self) -> Sent | None:
        self.refresh()
        return max(self.sends, key=lambda s: s.at) if self.sends else None

    def first_send_after(self, moment: float, *, other_than: str | None = None) -> Sent | None:
        self.refresh()
        later = [s for s in self.sends if s.at > moment and s.node != other_than]
        return min(later, key=lambda s: s.at) if later else None

    def _sample_leadership(self) -> None:
        # Read through the backend itself, so the bench never restates the record's layout.
        store = backend_from_url(self.redis_url, name=self.name, timeout=1.0)
        connected = False
        while not self._sampling.wait(0.02):
            with contextlib.suppress(BackendUnavailable):
                if not connected:
                    store.connect()
                    connected = True
                record = store.read().record
                holder = record.holder if record is not None else None
                term = record.term if record is not None else None
                node = holder.partition("@")[0] if holder is not None else None
                self.leadership.append((time.monotonic(), node, term))
        store.close()

    # -- faults --------------------------------------------------------------------------------

    def fault(self, name: str, kind: str) -> float:
        """Inflict ``kind`` on node ``name``; the monotonic instant the signal was sent."""
        node = self.nodes[name]
        # Remember the node's processes: what outlives the fault is reported (and cleaned).
        self.snapshots[name] = node.proc.family()
        if kind == "kill9":
            return node.proc.signal(signal.SIGKILL)
        if kind == "sigterm":
            return node.proc.signal(signal.SIGTERM)
        if kind == "sigstop":
            return node.proc.signal(signal.SIGSTOP, family=True)
        raise ValueError(kind)

    def leftovers(self, name: str) -> list[psutil.Process]:
        """Processes of node ``name`` that still run, other than its (dead) main process."""
        node = self.nodes.get(name) or next(n for n in self.retired if n.name == name)
        found = []
        for process in self.snapshots.get(name, []):
            if process.pid == node.proc.pid:
                continue
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process)
        return found


def _decode(raw: bytes | str) -> Sent:
    headers = json.loads(raw)["headers"]
    return Sent(
        at=float(headers["bench_sent_mono"]),
        wall=float(headers["bench_sent_at"]),
        node=str(headers["bench_node"]),
        pid=int(headers["bench_pid"]),
        occurrence=headers.get("leaderfeed_occurrence"),
        coalesced=tuple(headers.get("leaderfeed_coalesced") or ()),
        term=headers.get("leaderfeed_term"),
        sender=headers.get("leaderfeed_sender"),
    )
