"""Backends, chosen by URL scheme.

==================  ================================  =====================================
scheme              backend                           install
==================  ================================  =====================================
``memory://``       :class:`.memory.MemoryBackend`    (built in; one process only)
``redis://``,       :class:`.redis.RedisBackend`      ``pip install celery-leaderfeed[redis]``
``rediss://``,
``unix://``,
``sentinel://``,
``redis+sentinel://``,
``redis+cluster://``
``mongodb://``,     :class:`.mongodb.MongoBackend`    ``pip install celery-leaderfeed[mongodb]``
``mongodb+srv://``
``rethinkdb://``    :class:`.rethinkdb.RethinkBackend` ``pip install celery-leaderfeed[rethinkdb]``
``postgresql://``,  :class:`.postgresql.PostgresBackend` ``pip install celery-leaderfeed[postgres]``
``postgres://``,
``db+postgresql://``
==================  ================================  =====================================

Third-party backends register under the ``celery_leaderfeed.backends`` entry-point group
(``scheme = "package.module:Class"``) or with :func:`register_backend`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..errors import ConfigurationError
from ..urls import redact_url, url_scheme
from .base import Backend, DataChanged, FeedEvent, RecordChanged, Subscription

__all__ = [
    "Backend",
    "DataChanged",
    "FeedEvent",
    "RecordChanged",
    "Subscription",
    "backend_from_url",
    "register_backend",
    "serves_shared",
]


@dataclass(frozen=True, slots=True)
class _Entry:
    target: str  # "module:Class"
    driver: str | None  # top-level module of the driver, to recognise a missing install
    extra: str | None  # the pip extra that installs the driver


_REDIS = _Entry("celery_leaderfeed.backends.redis:RedisBackend", "redis", "redis")
_MONGO = _Entry("celery_leaderfeed.backends.mongodb:MongoBackend", "pymongo", "mongodb")
_POSTGRES = _Entry("celery_leaderfeed.backends.postgresql:PostgresBackend", "psycopg", "postgres")
_RETHINK = _Entry("celery_leaderfeed.backends.rethinkdb:RethinkBackend", "rethinkdb", "rethinkdb")

_REGISTRY: dict[str, _Entry] = {
    "memory": _Entry("celery_leaderfeed.backends.memory:MemoryBackend", None, None),
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "sentinel": _REDIS,
    "redis+sentinel": _REDIS,
    "rediss+sentinel": _REDIS,
    "redis+cluster": _REDIS,
    "rediss+cluster": _REDIS,
    "mongodb": _MONGO,
    "mongodb+srv": _MONGO,
    "rethinkdb": _RETHINK,
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
    # Celery's result-backend spellings (SQLAlchemy URLs) of the same store.
    "db+postgresql": _POSTGRES,
    "db+postgres": _POSTGRES,
    "db+postgresql+psycopg": _POSTGRES,
    "db+postgresql+psycopg2": _POSTGRES,
}


def register_backend(scheme: str, target: str) -> None:
    """Serve URLs of ``scheme`` with the backend class at ``"module:Class"``."""
    _REGISTRY[scheme.lower()] = _Entry(target, None, None)


def _lookup(scheme: str) -> _Entry | None:
    entry = _REGISTRY.get(scheme)
    if entry is None:
        for point in entry_points(group="celery_leaderfeed.backends"):
            if point.name.lower() == scheme:
                return _Entry(point.value, None, None)
    return entry


def backend_class(url: str) -> type[Backend]:
    """The backend class serving ``url``, or a ConfigurationError that says what to do."""
    scheme = url_scheme(url)
    entry = _lookup(scheme)
    if entry is None:
        known = ", ".join(f"{name}://" for name in sorted(_REGISTRY))
        raise ConfigurationError(
            f"no leaderfeed backend for {scheme}:// in {redact_url(url)!r} (known: {known})"
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if entry.driver is not None and (exc.name or "").split(".")[0] == entry.driver:
            raise ConfigurationError(
                f"the {scheme}:// backend needs the {entry.driver!r} package: "
                f"pip install 'celery-leaderfeed[{entry.extra}]'"
            ) from exc
        raise
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigurationError(f"{entry.target} is not a leaderfeed Backend subclass")
    return cls


def serves_shared(url: str) -> bool:
    """Whether a backend that processes share serves ``url``'s scheme. True also when that
    backend's driver is not installed: resolving the URL then names the extra to install."""
    entry = None
    try:
        entry = _lookup(url_scheme(url))
        if entry is None:
            return False
        return backend_class(url).shared_across_processes
    except ConfigurationError:
        return entry is not None and entry.driver is not None and _driver_missing(entry.driver)


def _driver_missing(driver: str) -> bool:
    return importlib.util.find_spec(driver) is None


def backend_from_url(
    url: str,
    *,
    name: str = "default",
    timeout: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> Backend:
    """Build the backend for ``url`` (it connects later, in ``start()``)."""
    return backend_class(url)(url, name=name, timeout=timeout, options=options)
