"""A MongoDB-wire server for the tests, in a process of its own, started and stopped by PID.

By default this is SecantusDB (``pip install secantusdb==0.7.0b3``): a GPL-2.0 server that
speaks MongoDB's wire protocol and presents itself as a one-node replica set, so change
streams, capped collections and tailable await cursors all work. It is only ever *run*
(``secantusd-py``), never imported, and keeps its data in memory.

If ``LEADERFEED_TEST_MONGOD`` names a real ``mongod`` binary, :func:`mongo_server` runs that
instead: a one-node replica set ``rs0`` whose data directory is wiped on every start, so a
restart comes back empty exactly like SecantusDB's in-memory storage.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pymongo
from pymongo.errors import PyMongoError

from harness.helpers import free_port, wait_until

START_DEADLINE = 30.0


class MongoServerProcess:
    """One server process on a fixed loopback port; restartable on the same port."""

    name = "server"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"leaderfeed-{self.name}-"))
        self.log = self.dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "") -> str:
        # directConnection: talk to this address, not to the member address the server
        # advertises (which a proxy in front of it would otherwise be bypassed for).
        return f"mongodb://127.0.0.1:{self.port}/{database}?directConnection=true"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> MongoServerProcess:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_until(
            self._answers, START_DEADLINE, interval=0.02, message=f"{self.name} on port {self.port}"
        )
        self.ready()
        return self

    def ready(self) -> None:
        """Anything to do once the server answers (e.g. initiate a replica set)."""

    def client(self, timeout: float = 5.0) -> pymongo.MongoClient[dict[str, object]]:
        millis = int(timeout * 1000)
        return pymongo.MongoClient(
            self.url(), serverSelectionTimeoutMS=millis, connectTimeoutMS=millis
        )

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {tail}")
        client = self.client(timeout=0.25)
        try:
            return bool(client.admin.command("ping").get("ok"))
        except PyMongoError:
            return False
        finally:
            client.close()

    def stop(self, *, kill: bool = True) -> None:
        """SIGKILL (a crash) or SIGTERM, by PID, and wait for the process to end."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def restart(self) -> None:
        """Kill -9 and start again on the same port: every document and connection is lost."""
        self.stop(kill=True)
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class SecantusServer(MongoServerProcess):
    """``secantusd-py`` with in-memory storage (killing it loses nothing worth keeping)."""

    name = "secantusdb"

    def command(self) -> list[str]:
        binary = shutil.which("secantusd-py")
        if binary is None:
            raise RuntimeError(
                "secantusd-py is not installed (pip install secantusdb==0.7.0b3); or set "
                "LEADERFEED_TEST_MONGODB_URL / LEADERFEED_TEST_MONGOD"
            )
        return [
            binary, "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", ":memory:", "--log-level", "WARNING",
        ]  # fmt: skip


class MongodServer(MongoServerProcess):
    """A real mongod as a one-node replica set, empty on every start."""

    name = "mongod"

    def __init__(self, binary: str, port: int | None = None) -> None:
        super().__init__(port)
        self.binary = binary

    def command(self) -> list[str]:
        data = self.dir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir()
        return [
            self.binary, "--bind_ip", "127.0.0.1", "--port", str(self.port),
            "--dbpath", str(data), "--replSet", "rs0", "--quiet",
        ]  # fmt: skip

    def ready(self) -> None:
        client = self.client()
        try:
            member = {"_id": 0, "host": f"127.0.0.1:{self.port}"}
            client.admin.command("replSetInitiate", {"_id": "rs0", "members": [member]})
            wait_until(
                lambda: client.admin.command("hello").get("isWritablePrimary"),
                START_DEADLINE,
                interval=0.05,
                message="mongod to become primary",
            )
        finally:
            client.close()

    def close(self) -> None:
        self.stop(kill=False)  # on disk: let it shut down cleanly before the files go
        shutil.rmtree(self.dir, ignore_errors=True)


def mongo_server(port: int | None = None) -> MongoServerProcess:
    """A real mongod if ``LEADERFEED_TEST_MONGOD`` names one, else SecantusDB (not started)."""
    mongod = os.environ.get("LEADERFEED_TEST_MONGOD")
    if mongod:
        return MongodServer(mongod, port)
    return SecantusServer(port)
