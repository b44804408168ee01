"""Leader election over a store you already run, and Celery integration built on it.

The engine (:class:`LeaderFeed`) imports neither Celery nor any driver. The Celery pieces
(:class:`LeaderFeedStep`, :func:`leader_only`, :func:`install`) are imported on first use;
without Celery that raises an ImportError saying ``pip install 'celery-leaderfeed[celery]'``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .backends import backend_from_url, register_backend
from .backends.base import Backend, DataChanged, RecordChanged, Subscription
from .engine.election import Lease, Resignation, Role, Stats
from .engine.feed import LeaderFeed, Status
from .engine.listeners import Event
from .errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidRecord,
    LeaderfeedError,
    LeaderfeedTimeout,
    NotLeaderError,
    StoreRefused,
    UsageError,
)
from .record import LeaderRecord, Observation, WriteResult
from .timing import Timing

if TYPE_CHECKING:
    from .celery.bootstep import LeaderFeedStep
    from .celery.decorators import current_term, leader_only
    from .celery.install import install
    from .celery.leader_gated import leader_gated

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ConfigurationError",
    "DataChanged",
    "Event",
    "InvalidRecord",
    "LeaderFeed",
    "LeaderFeedStep",
    "LeaderRecord",
    "LeaderfeedError",
    "LeaderfeedTimeout",
    "Lease",
    "NotLeaderError",
    "Observation",
    "RecordChanged",
    "Resignation",
    "Role",
    "Stats",
    "Status",
    "StoreRefused",
    "Subscription",
    "Timing",
    "UsageError",
    "WriteResult",
    "__version__",
    "backend_from_url",
    "current_term",
    "install",
    "leader_gated",
    "leader_only",
    "register_backend",
]

# Celery-dependent names, imported lazily so the engine works without Celery installed.
_LAZY = {
    "LeaderFeedStep": "celery_leaderfeed.celery.bootstep",
    "leader_only": "celery_leaderfeed.celery.decorators",
    "current_term": "celery_leaderfeed.celery.decorators",
    "install": "celery_leaderfeed.celery.install",
    "leader_gated": "celery_leaderfeed.celery.leader_gated",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_leaderfeed' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
