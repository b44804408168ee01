"""Run the wire double in a subprocess for tests, with fault hooks.

    server = start_rethinkdb_wire_server()          # free loopback port, no password
    conn = r.connect(server.host, server.port)
    server.drop_connections()   # every client socket is closed; returns once done
    server.restart()            # same port, empty store (kill=True: SIGKILL first)
    server.pause(); server.resume()   # SIGSTOP / SIGCONT: a server that stops answering
    server.stop()

All waits poll a condition against a deadline (no fixed sleeps).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT = 15.0


class RethinkDBWireServer:
    """Handle on one running double: ``.host``, ``.port``, ``.url`` and fault hooks."""

    def __init__(self, host: str, port: int | None, password: str) -> None:
        self.host = host
        self.port = port or 0
        self.password = password
        self._dir = tempfile.mkdtemp(prefix="rethinkdb-wire-")
        self._status = os.path.join(self._dir, "status.json")
        self._log_path = os.path.join(self._dir, "server.log")
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        credentials = f"admin:{self.password}" if self.password else "admin"
        return f"rethinkdb://{credentials}@{self.host}:{self.port}"

    def log(self) -> str:
        """What the server wrote on stderr (ready line, tracebacks of bugs in the double)."""
        try:
            return Path(self._log_path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _read_status(self) -> dict | None:
        try:
            with open(self._status, encoding="utf-8") as handle:
                status = json.load(handle)
        except (FileNotFoundError, ValueError):
            return None
        process = self._process
        return status if process is not None and status.get("pid") == process.pid else None

    def start(self) -> RethinkDBWireServer:
        if os.path.exists(self._status):
            os.remove(self._status)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "harness.servers.rethinkdb_wire",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--status-file",
            self._status,
            "--exit-with-parent",
        ]
        if self.password:
            command += ["--password", self.password]
        with open(self._log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

        def ready() -> dict | None:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"rethinkdb_wire exited with {self._process.returncode}:\n{self.log()}"
                )
            return self._read_status()

        self.port = wait_until(ready, START_TIMEOUT, message="the rethinkdb_wire server")["port"]
        return self

    def stop(self, *, cleanup: bool = True, kill: bool = False) -> None:
        """Stop the process (SIGTERM; SIGKILL with ``kill``, as a crash would)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if cleanup:
            shutil.rmtree(self._dir, ignore_errors=True)

    def restart(self, *, kill: bool = False) -> None:
        """Stop the process (SIGKILL with ``kill``) and start a new one on the same port:
        all data is lost."""
        self.stop(cleanup=False, kill=kill)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)

    def _signal(self, signum: int) -> None:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError("rethinkdb_wire server is not running")
        self._process.send_signal(signum)

    def drop_connections(self, timeout: float = 10.0) -> None:
        """Close every client socket (SIGUSR1); return once the server confirms it."""
        status = self._read_status()
        if self._process is None or status is None:
            raise RuntimeError("rethinkdb_wire server is not running")
        before = status["drops"]
        self._process.send_signal(signal.SIGUSR1)
        wait_until(
            lambda: (self._read_status() or {}).get("drops", before) > before,
            timeout,
            message="the connection drop",
        )

    def __enter__(self) -> RethinkDBWireServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_rethinkdb_wire_server(
    port: int | None = None, password: str = "", host: str = "127.0.0.1"
) -> RethinkDBWireServer:
    """Start the double on ``host:port`` (a free port when ``port`` is None)."""
    return RethinkDBWireServer(host, port, password).start()
