"""Redis behind Sentinel on free loopback ports: one master, one replica and three
``redis-server --sentinel`` processes monitoring them (quorum 2).

:meth:`SentinelGroup.failover` runs ``SENTINEL FAILOVER`` and returns once every sentinel names
the promoted replica. Every process is started here and stopped by its PID; nothing touches the
machine's own services on the default ports.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from harness.helpers import free_port, wait_until
from harness.servers.redis_process import RedisServer

#: Low, so that a test's failover or a dead master is noticed quickly.
DOWN_AFTER_MS = 1000
REPLICATION_USER = "replication"


class SentinelProcess:
    """One ``redis-server FILE --sentinel`` with its own config file (Sentinel rewrites it)."""

    def __init__(self, directory: Path, master_name: str, master_port: int, password: str) -> None:
        self.port = free_port()
        self.dir = directory / f"sentinel-{self.port}"
        self.dir.mkdir()
        self.config = self.dir / "sentinel.conf"
        self.config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.dir}",
                    f"logfile {self.dir / 'sentinel.log'}",
                    f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2",
                    f"sentinel auth-pass {master_name} {password}",
                    f"sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {master_name} 10000",
                    f"sentinel parallel-syncs {master_name} 1",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [binary, str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)


class SentinelGroup:
    """A master, a replica and three sentinels; the master requires ``password``."""

    def __init__(self, password: str, master_name: str = "lfmaster") -> None:
        self.password = password
        self.master_name = master_name
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-sentinel-"))
        # Replicas authenticate as their own user, so a test can cut one off (cut_replica)
        # without touching the clients' or the sentinels' connections.
        replication = (
            "--user", REPLICATION_USER, "on", f">{password}", "+psync", "+replconf", "+ping",
            "--masteruser", REPLICATION_USER,
        )  # fmt: skip
        self.master = RedisServer(password=password, extra_args=replication)
        self.replica = RedisServer(
            password=password, replica_of=self.master.port, extra_args=replication
        )
        self.sentinels: list[SentinelProcess] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    @property
    def url(self) -> str:
        """kombu's spelling: every sentinel, ``;``-separated, the master's password first."""
        first, *rest = self.sentinels
        return ";".join(
            [f"sentinel://:{self.password}@127.0.0.1:{first.port}/0"]
            + [f"sentinel://127.0.0.1:{s.port}/0" for s in rest]
        )

    @property
    def options(self) -> dict[str, str]:
        return {"master_name": self.master_name}

    def start(self) -> SentinelGroup:
        self.master.start()
        self.replica.start()
        wait_until(lambda: self._linked(self.replica), 10, message="the replica synced")
        self.sentinels = [
            SentinelProcess(self.dir, self.master_name, self.master.port, self.password).start()
            for _ in range(3)
        ]
        wait_until(self._monitoring, 15, interval=0.05, message="the sentinels see the group")
        return self

    def _linked(self, server: RedisServer) -> bool:
        client = server.client()
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def _ask(self, sentinel: SentinelProcess, *command: str) -> object:
        client = sentinel.client()
        try:
            return client.execute_command(*command)
        except redis.RedisError:
            return None
        finally:
            client.close()

    def master_port(self, sentinel: SentinelProcess) -> int | None:
        found = self._ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not isinstance(found, list | tuple) or len(found) != 2:
            return None
        return int(found[1])

    def _monitoring(self) -> bool:
        # Each sentinel knows the master, has found the replica (the master's INFO) and the
        # other two sentinels (hello messages), so a failover can be agreed on.
        for sentinel in self.sentinels:
            if self.master_port(sentinel) != self.master.port:
                return False
            replicas = self._ask(sentinel, "SENTINEL", "REPLICAS", self.master_name)
            others = self._ask(sentinel, "SENTINEL", "SENTINELS", self.master_name)
            if not isinstance(replicas, list) or len(replicas) < 1:
                return False
            if not isinstance(others, list) or len(others) < 2:
                return False
        return True

    def cut_replica(self) -> None:
        """The replica stops receiving the master's writes (its replication user is switched
        off and its link dropped); it keeps what it has, and the sentinels still take it for
        a replica that may be promoted (for ten times ``down-after-milliseconds``)."""
        client = self.master.client()
        try:
            client.execute_command("ACL", "SETUSER", REPLICATION_USER, "off")
            client.execute_command("CLIENT", "KILL", "USER", REPLICATION_USER)
        finally:
            client.close()
        wait_until(lambda: not self._linked(self.replica), 5, message="the replica cut off")

    def failover(self, timeout: float = 15.0) -> float:
        """``SENTINEL FAILOVER``: the replica becomes the master; returns once every sentinel
        names it and it answers as a master. The servers swap roles in this object."""
        old, new = self.master, self.replica
        client = self.sentinels[0].client()
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        finally:
            client.close()

        def promoted() -> bool:
            if any(self.master_port(s) != new.port for s in self.sentinels):
                return False
            role = new.client()
            try:
                return role.info("replication").get("role") == "master"
            except redis.RedisError:
                return False
            finally:
                role.close()

        wait_until(promoted, timeout, interval=0.02, message="the sentinels promoted the replica")
        self.master, self.replica = new, old
        new.replica_of, old.replica_of = None, new.port
        return timeout

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def close(self) -> None:
        self.stop()
        for server in self.servers:
            server.close()
        shutil.rmtree(self.dir, ignore_errors=True)
