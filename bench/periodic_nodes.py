"""The nodes of one periodic-runs cluster, the sends they made, and who held leadership.

A node is ``celery worker -B`` (celery-leaderfeed), ``celery beat`` with RedBeat's scheduler,
or ``single-beat celery beat``, all of ``bench/periodic_app.py``. Sends are read back from the
broker's list; for celery-leaderfeed the leader record is sampled every 20 ms, from the
election's store: the broker's Redis, or the store the cluster was given (``store_url``).
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
from typing import Any

import psutil
import redis

from bench.inference import Sent
from bench.periodic_app import SINGLE_BEAT_ENV
from bench.processes import Proc, python, wait_for
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.errors import BackendUnavailable

#: How each system's node says it is up (single-beat's wrapper says nothing until it leads).
READY_MARKER = {"leaderfeed": " ready.", "redbeat": "beat: Starting...", "single-beat": None}
#: What a node's signal does for each fault, and whether it goes to all its processes.
SIGNALS = {
    "kill9": (signal.SIGKILL, False),
    "sigterm": (signal.SIGTERM, False),
    "sigstop": (signal.SIGSTOP, True),
}


@dataclass
class Node:
    name: str
    proc: Proc


class PeriodicCluster:
    """The nodes of one system and profile, sharing one election or lock and one runs queue.

    ``store_url`` and ``store_options`` (celery-leaderfeed only): the election's store and its
    backend options, instead of the broker's Redis.
    """

    def __init__(
        self,
        system: str,
        profile: str,
        redis_url: str,
        workdir: Path,
        period: float,
        *,
        store_url: str | None = None,
        store_options: dict[str, Any] | None = None,
    ):
        self.system, self.profile, self.redis_url = system, profile, redis_url
        self.workdir, self.period = workdir, period
        self.store_url, self.store_options = store_url, dict(store_options or {})
        self.name = f"pr-{system}-{profile}-{uuid.uuid4().hex[:6]}"
        self.nodes: dict[str, Node] = {}
        self.retired: list[Node] = []
        self.sends: list[Sent] = []
        self.leadership: list[tuple[float, str | None, int | None]] = []
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self._families: dict[str, list[psutil.Process]] = {}  # a node's processes at its fault
        self._seen = self._count = 0
        self._closed = False
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample_leadership, daemon=True)

    def _command(self, node: str) -> list[str]:
        app = ("-m", "celery", "-A", "bench.periodic_app")
        if self.system == "leaderfeed":
            return python(
                *app, "worker", "-B", "-n", f"{node}@%h", "-P", "threads", "-c", "1",
                "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            )  # fmt: skip
        if self.system == "redbeat":
            return python(*app, "beat", "-l", "INFO")
        wrapper = shutil.which("single-beat")
        if wrapper is None:
            raise RuntimeError("single-beat is not installed (pip install single-beat)")
        schedule = self.workdir / f"{self.name}-{node}.schedule"
        return [wrapper, *python(*app, "beat", "-l", "INFO", "-s", str(schedule))]

    def _env(self, node: str) -> dict[str, str]:
        env = {
            "BENCH_SYSTEM": self.system,
            "BENCH_PROFILE": self.profile,
            "BENCH_NAME": self.name,
            "BENCH_NODE": node,
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_PERIOD": str(self.period),
        }
        if self.store_url is not None:
            env |= {
                "BENCH_STORE_URL": self.store_url,
                "BENCH_STORE_OPTIONS": json.dumps(self.store_options),
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
        self.nodes[name] = node = Node(name, Proc(self._command(name), log, self._env(name)))
        return node

    def wait_ready(self, node: Node, timeout: float = 60.0) -> None:
        marker = READY_MARKER[self.system]
        if marker is None:
            time.sleep(1.0)
            return

        def ready() -> bool:
            if not node.proc.alive():
                raise RuntimeError(f"node {node.name} exited:\n{node.proc.log()[-3000:]}")
            return marker in node.proc.log()

        wait_for(ready, timeout, f"node {node.name} to start", 0.02)

    def start(self, size: int = 3) -> None:
        for node in [self.start_node() for _ in range(size)]:
            self.wait_ready(node)
        if self.system == "leaderfeed":
            self._sampler.start()

    def retire(self, name: str) -> None:
        self.retired.append(self.nodes.pop(name))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sampling.set()
        if self._sampler.is_alive():
            self._sampler.join(2)
        for node in [*self.nodes.values(), *self.retired]:
            node.proc.stop()
        self.refresh()
        self._redis.close()

    def refresh(self) -> list[Sent]:
        """Read the sends published since the last call (the list is never consumed)."""
        raw = self._redis.lrange(f"{self.name}.runs", 0, -(self._seen + 1))
        self._seen += len(raw)
        self.sends.extend(sorted((_decode(item) for item in raw), key=lambda s: s.at))
        return self.sends

    def last_send(self) -> Sent | None:
        return max(self.refresh(), key=lambda s: s.at, default=None)

    def first_send_after(self, moment: float, other_than: str | None) -> Sent | None:
        later = (s for s in self.refresh() if s.at > moment and s.node != other_than)
        return min(later, key=lambda s: s.at, default=None)

    def _sample_leadership(self) -> None:
        # Through the backend itself, so the bench never restates the record's layout.
        url, options = self.store_url or self.redis_url, self.store_options or None
        store = backend_from_url(url, name=self.name, timeout=1.0, options=options)
        connected = False
        while not self._sampling.wait(0.02):
            with contextlib.suppress(BackendUnavailable):
                if not connected:
                    store.connect()
                    connected = True
                record = store.read().record
                holder = record.holder if record is not None else None
                node = holder.partition("@")[0] if holder is not None else None
                term = record.term if record is not None else None
                self.leadership.append((time.monotonic(), node, term))
        store.close()

    def fault(self, name: str, kind: str) -> float:
        """Inflict ``kind`` on node ``name``; returns the monotonic instant of the signal."""
        node = self.nodes[name]
        self._families[name] = node.proc.family()  # what outlives the fault is reported
        sig, family = SIGNALS[kind]
        return node.proc.signal(sig, family=family)

    def leftovers(self, name: str) -> list[psutil.Process]:
        """Processes of node ``name`` still running, other than its main process."""
        node = self.nodes.get(name) or next(n for n in self.retired if n.name == name)
        found = []
        for process in self._families.get(name, []):
            with contextlib.suppress(psutil.Error):
                running = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
                if running and process.pid != node.proc.pid:
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
