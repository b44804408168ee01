"""A private RabbitMQ node (Debian's ``rabbitmq-server``) on free loopback ports, stopped by PID.

A machine may already run a node on 5672 configured in ``/etc/rabbitmq``; this one gets its own
node name, configuration file, enabled-plugins file, data and log directories, AMQP port and
Erlang distribution port, so the two never meet. Ready when it accepts an AMQP connection
(about 4 s).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import amqp
import psutil

from harness.helpers import free_port, wait_until

_USER = "rabbitmq"


class RabbitMQServer:
    """One rabbitmq-server node with default guest credentials on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        binary = shutil.which("rabbitmq-server") or (
            "/usr/sbin/rabbitmq-server" if Path("/usr/sbin/rabbitmq-server").exists() else None
        )
        if binary is None:
            raise RuntimeError(
                "rabbitmq-server is not installed (apt-get install -y rabbitmq-server) and "
                "LEADERFEED_TEST_RABBITMQ_URL is not set"
            )
        self.binary = binary
        self.port = free_port()
        # The distribution port must not be the AMQP port + 20000 of any node (Erlang's rule).
        self.dist_port = free_port()
        while self.dist_port in (self.port + 20000, 25672):
            self.dist_port = free_port()
        self.node = f"leaderfeed-{uuid.uuid4().hex[:8]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="leaderfeed-rabbitmq-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _files(self) -> dict[str, str]:
        config = self.dir / "rabbitmq.conf"
        config.write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "log.console = false\n"
        )
        plugins = self.dir / "enabled_plugins"
        plugins.write_text("[].\n")
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:  # the server drops to the rabbitmq user: it must own its files
            with contextlib.suppress(KeyError):
                user = pwd.getpwnam(_USER)
                for path in [self.dir, *self.dir.rglob("*")]:
                    os.chown(path, user.pw_uid, user.pw_gid)
        return {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
        }

    def start(self, timeout: float = 60.0) -> RabbitMQServer:
        env = {**os.environ, **self._files()}
        self.process = subprocess.Popen(
            [self.binary],
            env=env,
            stdout=(self.dir / "stdout.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, timeout, interval=0.1, message=f"rabbitmq on port {self.port}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"rabbitmq-server exited: {(self.dir / 'stdout.log').read_text()[-3000:]}"
            )
        connection = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=1)
        try:
            connection.connect()
        except (OSError, amqp.exceptions.AMQPError):
            return False
        with contextlib.suppress(Exception):
            connection.close()
        return True

    def stop(self) -> None:
        """Kill the node and every process it started, by PID.

        The start script re-executes itself as the ``rabbitmq`` user in a session of its own,
        so the node is found through its PID file (the Erlang VM) rather than as our child.
        """
        process, self.process = self.process, None
        family: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            if process is not None:
                root = psutil.Process(process.pid)
                family += [root, *root.children(recursive=True)]
        with contextlib.suppress(OSError, ValueError, psutil.NoSuchProcess):
            beam = psutil.Process(int((self.dir / "node.pid").read_text().strip()))
            family += [beam, *beam.children(recursive=True)]
            # The shells that started it (same process group) go with it.
            family += [p for p in beam.parents() if p.pid != 1 and _same_group(p, beam)]
        for member in {p.pid: p for p in family}.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(family, timeout=20)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _same_group(one: psutil.Process, other: psutil.Process) -> bool:
    try:
        return os.getpgid(one.pid) == os.getpgid(other.pid)
    except OSError:
        return False


if __name__ == "__main__":  # a quick manual check: python -m harness.servers.rabbitmq_process
    server = RabbitMQServer().start()
    print(server.url)
    server.close()
