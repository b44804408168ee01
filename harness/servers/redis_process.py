"""A real redis-server on a free loopback port, started and stopped by PID."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from harness.helpers import free_port, wait_until


def answers(client: redis.Redis) -> bool:
    """Whether the server behind ``client`` answers PING; the client is closed either way."""
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class RedisServer:
    """One redis-server process with no persistence; restartable on the same port, empty or
    from a snapshot taken earlier (:meth:`snapshot`, :meth:`restart_from`), and optionally a
    replica of another (``replica_of``: that server's port)."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        replica_of: int | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (apt-get install -y redis-server) and "
                "LEADERFEED_TEST_REDIS_URL is not set"
            )
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.replica_of = replica_of
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    def start(self, snapshot: bytes | None = None) -> RedisServer:
        """Start on the port; with ``snapshot`` (from :meth:`snapshot`) it loads that state."""
        dump = self.dir / "dump.rdb"
        if snapshot is None:
            dump.unlink(missing_ok=True)
        else:
            dump.write_bytes(snapshot)
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            # A replica's first full sync starts at once, not after the default 5 s wait.
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.password:
            # masterauth on a master too: Sentinel may turn it into a replica.
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, interval=0.01, message=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}"
            )
        return answers(self.client())

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def restart(self) -> None:
        """Kill -9 and start again on the same port: every key and connection is lost."""
        self.stop()
        self.start()

    def snapshot(self) -> bytes:
        """Everything the server holds now, as an RDB file (SAVE: synchronous)."""
        client = self.client()
        try:
            client.save()
        finally:
            client.close()
        dump = self.dir / "dump.rdb"
        data = dump.read_bytes()
        dump.unlink()
        return data

    def restart_from(self, snapshot: bytes) -> None:
        """Kill -9 and start again from ``snapshot``, as a supervisor restarting Redis from an
        RDB or AOF file older than the last writes would: a new run id, an earlier state."""
        self.stop()
        self.start(snapshot)

    def cut_replication(self) -> None:
        """Stop a replica from receiving its master's writes; it keeps what it has."""
        client = self.client()
        try:
            client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        finally:
            client.close()

    def promote(self) -> None:
        """Make a replica a master (REPLICAOF NO ONE): it gets a new replication id."""
        client = self.client()
        try:
            client.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            client.close()
        self.replica_of = None

    def kill_clients(self) -> int:
        """Drop every client connection (CLIENT KILL), as a network blip would."""
        client = self.client()
        killed = client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        killed += client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        client.close()
        return int(killed)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
