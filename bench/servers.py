"""The stores: each a real server process on a free loopback port, from ``harness.servers``."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from harness.servers.postgres_process import PostgresServer
from harness.servers.redis_process import RedisServer
from harness.servers.rethinkdb_wire.process import start_rethinkdb_wire_server
from harness.servers.secantus_process import SecantusServer

#: Every backend, in the order the page lists them, and what its store is on this machine.
SERVER_OF = {
    "redis": "redis-server",
    "postgresql": "PostgreSQL (Debian), LISTEN/NOTIFY",
    "postgresql-fast": "PostgreSQL (Debian), LISTEN/NOTIFY and fast_failover's advisory lock",
    "mongodb-changestream": "SecantusDB (MongoDB wire protocol, one-node replica set)",
    "mongodb-capped": "SecantusDB (MongoDB wire protocol), capped collection + tailable cursor",
    "rethinkdb": "rethinkdb_wire test server (RethinkDB wire protocol V1_0)",
    "memory": "in-process (threads of one process)",
}
BACKENDS = tuple(SERVER_OF)


@dataclass(frozen=True)
class Store:
    """Where the members of one backend connect, and the server's PID (for its CPU)."""

    backend: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    pid: int | None = None

    def fresh(self) -> Store:
        """The same server under new collection / table names: a store with no record yet."""
        key = "table" if self.backend.startswith(("rethinkdb", "postgresql")) else "collection"
        if self.backend in ("redis", "memory"):
            return self
        return replace(self, options={**self.options, key: f"bench_{uuid.uuid4().hex[:8]}"})


def _pid(process: subprocess.Popen[Any] | None) -> int | None:
    return None if process is None else process.pid


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def store(backend: str) -> Iterator[Store]:
    """Start the server of ``backend`` (none for memory), and stop it afterwards."""
    if backend == "memory":
        yield Store("memory", f"memory://bench-{uuid.uuid4().hex[:8]}")
    elif backend == "redis":
        with redis_server() as redis:
            yield Store("redis", redis.url, pid=_pid(redis.process))
    elif backend in ("postgresql", "postgresql-fast"):
        # Each member holds two connections (queries, LISTEN), three with fast_failover (the
        # lock): room for the cost part's 50.
        postgres = PostgresServer(settings={"max_connections": "300"}).start()
        options = {"fast_failover": True} if backend == "postgresql-fast" else {}
        try:
            url = postgres.url(postgres.create_database("bench"))
            yield Store(backend, url, options, pid=postgres.pid()).fresh()
        finally:
            postgres.close()
    elif backend.startswith("mongodb"):
        mongo = SecantusServer().start()
        try:
            options = {"notify": backend.partition("-")[2], "database": "bench"}
            yield Store(backend, mongo.url("bench"), options, _pid(mongo.process)).fresh()
        finally:
            mongo.close()
    elif backend == "rethinkdb":
        rethink = start_rethinkdb_wire_server()
        try:
            # The launcher keeps its process private; its PID is only read, for the CPU.
            yield Store("rethinkdb", rethink.url, pid=_pid(rethink._process)).fresh()
        finally:
            rethink.stop()
    else:
        raise ValueError(f"unknown backend {backend!r}")
