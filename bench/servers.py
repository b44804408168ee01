"""The stores, each a real server process on a free loopback port, started by the bench.

The server helpers of the test suite are reused (never copied): ``RedisServer`` (a real
``redis-server``), ``SecantusServer`` (SecantusDB, a GPL MongoDB wire-protocol server that is
only ever *run* as its own process; a one-node replica set, so both change streams and capped
collections work) and the ``rethinkdb_wire`` server (a test server speaking RethinkDB's real
wire protocol - not RethinkDB itself). The machine's default-port services are never used.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from tests.servers.redis_process import RedisServer
from tests.servers.rethinkdb_wire.process import RethinkDBWireServer, start_rethinkdb_wire_server
from tests.servers.secantus_process import SecantusServer

#: Every backend, in the order the pages list them.
BACKENDS = ("redis", "mongodb-changestream", "mongodb-capped", "rethinkdb", "memory")
#: What each store really is on this machine.
SERVER_OF = {
    "redis": "redis-server",
    "mongodb-changestream": "SecantusDB (MongoDB wire protocol, one-node replica set)",
    "mongodb-capped": "SecantusDB (MongoDB wire protocol), capped collection + tailable cursor",
    "rethinkdb": "rethinkdb_wire test server (RethinkDB wire protocol V1_0)",
    "memory": "in-process (threads of one process)",
}


@dataclass
class Store:
    """Where members of one backend connect: URL, backend options, the server's PID."""

    backend: str
    url: str
    options: Mapping[str, Any] = field(default_factory=dict)
    pid: int | None = None

    def fresh(self) -> Store:
        """The same server with new collection/table names (a store with no record yet)."""
        suffix = uuid.uuid4().hex[:8]
        options = dict(self.options)
        if self.backend.startswith("mongodb"):
            options["collection"] = f"bench_{suffix}"
        elif self.backend == "rethinkdb":
            options["table"] = f"bench_{suffix}"
        return Store(self.backend, self.url, options, self.pid)

    def server_process(self) -> psutil.Process | None:
        return None if self.pid is None else psutil.Process(self.pid)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def store(backend: str) -> Iterator[Store]:
    """Start the server of ``backend`` (none for memory) and stop it afterwards."""
    if backend == "memory":
        yield Store("memory", f"memory://bench-{uuid.uuid4().hex[:8]}")
    elif backend == "redis":
        with redis_server() as server:
            assert server.process is not None
            yield Store("redis", server.url, {}, server.process.pid)
    elif backend.startswith("mongodb"):
        mongo = SecantusServer().start()
        try:
            assert mongo.process is not None
            notify = backend.partition("-")[2]
            yield Store(
                backend,
                mongo.url("bench"),
                {"notify": notify, "database": "bench"},
                mongo.process.pid,
            ).fresh()
        finally:
            mongo.close()
    elif backend == "rethinkdb":
        rethink: RethinkDBWireServer = start_rethinkdb_wire_server()
        try:
            # The helper exposes no PID otherwise; it is only read, for CPU figures.
            process = rethink._process
            yield Store(
                "rethinkdb", rethink.url, {}, None if process is None else process.pid
            ).fresh()
        finally:
            rethink.stop()
    else:
        raise ValueError(f"unknown backend {backend!r}")
