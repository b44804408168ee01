"""A Redis Cluster on free loopback ports: three cluster-enabled redis-servers joined with
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``, stopped by PID."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from harness.helpers import free_port, wait_until
from harness.servers.redis_process import answers


class RedisClusterGroup:
    """Three cluster-enabled redis-servers, every slot assigned (``--cluster-replicas 0``)."""

    def __init__(self, password: str | None = None, size: int = 3) -> None:
        self.password = password
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-cluster-"))
        # Cluster nodes also listen on port + 10000 (the bus): pick ports whose bus is free.
        self.ports: list[int] = []
        while len(self.ports) < size:
            port = free_port()
            if port < 55535 and port not in self.ports:
                self.ports.append(port)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return ";".join(
            f"redis+cluster://{auth if i == 0 else ''}127.0.0.1:{port}"
            for i, port in enumerate(self.ports)
        )

    def start(self) -> RedisClusterGroup:
        binary = shutil.which("redis-server") or "redis-server"
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            args = [
                binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", str(node_dir),
                "--logfile", str(node_dir / "redis.log"), "--cluster-enabled", "yes",
                "--cluster-config-file", str(node_dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
            if self.password:
                args += ["--requirepass", self.password, "--masterauth", self.password]
            self.processes.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in self.ports:
            wait_until(lambda port=port: self._answers(port), 10, message=f"node {port}")
        create = ["redis-cli", "--cluster", "create"]
        create += [f"127.0.0.1:{port}" for port in self.ports]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        if self.password:
            create += ["-a", self.password, "--no-auth-warning"]
        subprocess.run(create, check=True, capture_output=True, timeout=30)
        wait_until(self._ok, 15, interval=0.05, message="cluster_state:ok on every node")
        return self

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=2)

    def _answers(self, port: int) -> bool:
        return answers(self.client(port))

    def _ok(self) -> bool:
        for port in self.ports:
            client = self.client(port)
            try:
                if "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
