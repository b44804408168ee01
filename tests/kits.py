"""How the shared suites reach each backend, so one suite runs unchanged against all of them.

A *kit* (function scope, fresh election name per test) builds backends and can write foreign
data into the record. A *fault server* (private server per test) can also be restarted and can
drop every client connection. Each backend's fixtures live in ``tests/fixtures/<backend>.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.backends.base import Backend

#: Every backend the contract and fault suites run against. None may be skipped.
BACKEND_IDS = (
    "memory",
    "redis",
    "redis-sentinel",
    "redis-sentinel-wait",
    "redis-cluster",
    "mongodb-changestream",
    "mongodb-capped",
    "rethinkdb",
    "postgresql",
)
#: Backends with a real server process that the fault tests can restart.
SERVER_BACKEND_IDS = (
    "redis",
    "redis-sentinel",
    "mongodb-changestream",
    "mongodb-capped",
    "rethinkdb",
    "postgresql",
    "postgresql-fast",  # fast_failover: claims brought forward by the holder's session ending
)


def fixture_name(backend_id: str, suffix: str) -> str:
    return f"{backend_id.replace('-', '_')}_{suffix}"


@dataclass
class BackendKit:
    """One backend as the contract suite sees it."""

    id: str
    url: str
    #: Writes something that is not a leader record where election ``name``'s record lives.
    corrupt: Callable[[str], None]
    options: Mapping[str, Any] = field(default_factory=dict)
    #: A URL of this scheme where no server answers.
    unreachable_url: str = ""
    name: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:12]}")
    _made: list[Backend] = field(default_factory=list)

    def backend(self, name: str | None = None, *, timeout: float = 2.0) -> Backend:
        backend = backend_from_url(
            self.url, name=name or self.name, timeout=timeout, options=dict(self.options)
        )
        self._made.append(backend)
        return backend

    def connected(self, name: str | None = None, *, timeout: float = 2.0) -> Backend:
        backend = self.backend(name, timeout=timeout)
        backend.connect()
        backend.create()
        return backend

    def close(self) -> None:
        for backend in self._made:
            backend.close()


class FaultServer(Protocol):
    """A private server the fault tests may break."""

    url: str
    options: Mapping[str, Any]

    def restart(self) -> None:
        """Kill the server (-9) and start it again on the same port, empty - or, for
        PostgreSQL, crashed (``pg_ctl -m immediate``) and recovered: what survived comes back
        stamped with the old history, so the record is suspect (or lost, as with the others)."""

    def drop_connections(self) -> None:
        """Close every client connection; return once they are closed."""

    def close(self) -> None: ...
