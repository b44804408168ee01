"""``python -m example_project.demo``: three ``celery worker -B`` nodes, two failovers, no lost
or repeated periodic run.

It starts its own redis-server on a free loopback port (unless ``REDIS_URL`` is set), starts
three nodes of :mod:`example_project.proj`, shows who leads, kills the leader with ``kill -9``
and times the failover, SIGTERMs the new leader and times the handover, then prints which node
sent each periodic run. Exit status 0 when every scheduled run was sent exactly once (its own
send, or listed in the one send that stood for runs missed during a failover), 1 otherwise,
2 when it could not run: a node or redis-server that exits unasked is noticed at once, and the
last lines of its log are printed (the logs are then kept, not deleted). Every process it
started is stopped on the way out.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import redis

from celery_leaderfeed.backends import Backend, backend_from_url

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 1.0
TAIL_LINES = 25
T = TypeVar("T")


class DemoFailed(Exception):
    """The demo cannot go on; ``logs`` are the files that say why."""

    def __init__(self, message: str, logs: list[Path]) -> None:
        super().__init__(message)
        self.logs = logs


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    check: Callable[[], None] = lambda: None,
) -> T:
    """Poll ``condition``; ``check`` raises at once when waiting has become pointless."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({exc.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    """The processes the demo started, and what it reads from Redis."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-demo-"))
        self.name = f"demo-{uuid.uuid4().hex[:6]}"
        self.redis_server: subprocess.Popen[bytes] | None = None
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()  # nodes the demo killed or stopped on purpose
        self.family: list[int] = []  # children of the nodes (embedded beat, ...)
        self.client: redis.Redis | None = None
        self.store: Backend | None = None

    def open(self) -> None:
        """Start redis-server (unless ``REDIS_URL`` names one) and connect to it."""
        self.url = os.environ.get("REDIS_URL") or self._start_redis()
        self.client = redis.Redis.from_url(self.url)
        self.store = backend_from_url(self.url, name=self.name, timeout=2.0)
        self.store.connect()

    @property
    def redis(self) -> redis.Redis:
        assert self.client is not None, "open() first"
        return self.client

    def _start_redis(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found: apt-get install -y redis-server (or set REDIS_URL)")
        port = free_port()
        log = (self.dir / "redis-server.log").open("ab")
        self.redis_server = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 10, "redis-server", self.check_alive)
        client.close()
        print(f"redis: started redis-server on 127.0.0.1:{port} (pid {self.redis_server.pid})")
        return url

    # -- nodes ---------------------------------------------------------------------------------

    def host(self, node: str) -> str:
        return f"{node}@{socket.gethostname()}"

    def start(self, nodes: list[str]) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "REDIS_URL": self.url,
            "PROJ_NAME": self.name,
            "PROJ_PERIOD": str(PERIOD),
        }
        for node in nodes:
            log = (self.dir / f"{node}.log").open("ab")
            self.nodes[node] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "example_project.proj",
                    "worker",
                    "-B",
                    "-n",
                    self.host(node),
                    "-P",
                    "threads",
                    "-c",
                    "2",
                    "-l",
                    "INFO",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        for node in nodes:
            self.wait(functools.partial(self.is_ready, node), 60, f"{node} to start")
            self.family += _children(self.nodes[node].pid)

    def log_path(self, node: str) -> Path:
        return self.dir / f"{node}.log"

    def log(self, node: str) -> str:
        return self.log_path(node).read_text(errors="replace")

    def is_ready(self, node: str) -> bool:
        return "ready." in self.log(node)

    def wait(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        return wait_for(condition, timeout, what, self.check_alive)

    def check_alive(self) -> None:
        """Raise at once if redis-server or a node the demo did not stop has exited."""
        if self.redis_server is not None and self.redis_server.poll() is not None:
            raise DemoFailed(
                f"redis-server exited with status {self.redis_server.returncode}",
                [self.dir / "redis-server.log"],
            )
        for node, process in self.nodes.items():
            if node not in self.stopped and process.poll() is not None:
                raise DemoFailed(
                    f"{node} exited with status {process.returncode}", [self.log_path(node)]
                )

    def all_logs(self) -> list[Path]:
        server = [self.dir / "redis-server.log"] if self.redis_server is not None else []
        return server + [self.log_path(node) for node in self.nodes]

    def stop_node(self, node: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
        self.stopped.add(node)
        process = self.nodes[node]
        process.send_signal(sig)
        return process

    def leader(self) -> tuple[str | None, int | None]:
        assert self.store is not None, "open() first"
        record = self.store.read().record
        return (None, None) if record is None else (record.holder, record.term)

    def node_of(self, host: str) -> str:
        return host.partition("@")[0]

    def runs(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in self.redis.lrange(f"{self.name}:runs", 0, -1)]

    def wait_runs_from(self, host: str, count: int) -> None:
        self.wait(
            lambda: sum(run["sender"] == host for run in self.runs()) >= count,
            30,
            f"{count} periodic runs sent by {host}",
        )

    def new_leader(self, old: str | None = None) -> tuple[str, int]:
        """Wait for a leader other than ``old``."""

        def changed() -> tuple[str, int] | None:
            holder, term = self.leader()
            return (holder, term) if holder is not None and holder != old and term else None

        return self.wait(changed, 30, "a new leader")

    def close(self, *, keep_logs: bool = False) -> bool:
        """Stop what the demo started; True when the log directory was kept."""
        for process in self.nodes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.nodes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for pid in self.family:
            _kill_if_ours(pid)
        if self.redis_server is not None:
            self.redis_server.kill()
            self.redis_server.wait(5)
        elif self.client is not None:
            for key in self.redis.scan_iter(match=f"{self.name}*"):
                self.redis.delete(key)
            for key in self.redis.scan_iter(match=f"leaderfeed:{{{self.name}}}*"):
                self.redis.delete(key)
        if self.store is not None:
            self.store.close()
        if keep_logs and any(self.dir.iterdir()):
            return True
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _kill_if_ours(pid: int) -> None:
    """Kill a leftover child of a node, unless its PID now belongs to something else."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"celery" in cmdline:
        os.kill(pid, signal.SIGKILL)


def _due(occurrence: str) -> datetime:
    return datetime.strptime(occurrence.rpartition("@")[2], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc
    )


def report(runs: list[dict[str, Any]]) -> bool:
    """Print one line per scheduled run; True when each was covered exactly once."""
    covered: dict[str, list[tuple[dict[str, Any], str]]] = defaultdict(list)
    for run in runs:
        covered[run["occurrence"]].append((run, "own send"))
        for missed in run["coalesced"]:
            covered[missed].append((run, "coalesced"))
    if not covered:
        print("no periodic run was recorded")
        return False
    first = min(_due(occurrence) for occurrence in covered)
    last = max(_due(occurrence) for occurrence in covered)
    entry = next(iter(covered)).rpartition("@")[0]
    slots = int((last - first) / timedelta(seconds=PERIOD)) + 1
    grid = [
        f"{entry}@{first + k * timedelta(seconds=PERIOD):%Y-%m-%dT%H:%M:%S.%fZ}"
        for k in range(slots)
    ]
    duplicates = missed = 0
    print(f"\n{'occurrence':<38} {'sent by':<24} {'term':>15}  note")
    for occurrence in sorted(set(grid) | set(covered), key=_due):
        sends = covered.get(occurrence, [])
        if not sends:
            missed += 1
            print(f"{occurrence:<38} {'-':<24} {'-':>15}  MISSED")
        for run, how in sends:
            note = "" if how == "own send" else "coalesced into the next send"
            if len(sends) > 1:
                note, duplicates = "DUPLICATE", duplicates + 1
            print(f"{occurrence:<38} {run['sender']:<24} {run['term']:>15}  {note}")
    off_grid = len(set(covered) - set(grid))
    print(
        f"\n{len(grid)} scheduled runs: {duplicates} duplicate sends, {missed} missed, "
        f"{off_grid} off the schedule"
    )
    return duplicates == missed == off_grid == 0


def main() -> int:
    demo = Demo()
    failed = True  # until the report says otherwise: an unexpected error keeps the logs too
    try:
        demo.open()
        nodes = ["node1", "node2", "node3"]
        print(f"starting {', '.join(nodes)}: celery worker -B with the LeaderScheduler ...")
        demo.start(nodes)
        leader, term = demo.new_leader()
        print(f"leader: {leader} (term {term})")
        demo.wait_runs_from(leader, 3)
        print(f"periodic runs so far: {len(demo.runs())}, all sent by {leader}")

        print(f"\nkill -9 {leader} (pid {demo.nodes[demo.node_of(leader)].pid}) ...")
        killed_at = time.time()
        demo.stop_node(demo.node_of(leader), signal.SIGKILL).wait(10)
        successor, term = demo.new_leader(leader)
        took = time.time() - killed_at
        print(f"crash failover: {successor} leads (term {term}) {took:.2f} s after the kill")
        demo.wait_runs_from(successor, 3)
        first = min(run["at"] for run in demo.runs() if run["sender"] == successor)
        print(f"  first periodic run sent by {successor}: {first - killed_at:.2f} s after the kill")

        print(f"\nSIGTERM {successor} (graceful shutdown) ...")
        stopped_at = time.time()
        demo.stop_node(demo.node_of(successor), signal.SIGTERM)
        third, term = demo.new_leader(successor)
        took = time.time() - stopped_at
        print(f"graceful handover: {third} leads (term {term}) {took:.2f} s after SIGTERM")
        demo.wait_runs_from(third, 3)

        ok = report(demo.runs())
        print("OK: every periodic run was sent exactly once" if ok else "FAILED: see above")
        failed = not ok
        return 0 if ok else 1
    except DemoFailed as exc:
        return abort(demo, str(exc), exc.logs)
    except TimeoutError as exc:
        return abort(demo, str(exc), demo.all_logs())
    except KeyboardInterrupt:
        return abort(demo, "interrupted", [])
    finally:
        # Stop everything before deleting anything; keep the logs of a run that went wrong.
        if demo.close(keep_logs=failed):
            print(f"\nall logs are kept in {demo.dir}")


def abort(demo: Demo, reason: str, logs: list[Path]) -> int:
    print(f"\ndemo aborted: {reason}", flush=True)
    for path in logs:
        print(f"\n--- last lines of {path} ---\n{tail(path)}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
