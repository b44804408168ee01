"""Redis backend: one server (``redis://``, ``rediss://``, ``unix://``), a master behind Sentinel
(``sentinel://``, ``redis+sentinel://``) or a Cluster (``redis+cluster://``); see
:mod:`.backend` for the record and its scripts, :mod:`.clients` for the URLs and options."""

from __future__ import annotations

from .backend import RedisBackend

__all__ = ["RedisBackend"]
