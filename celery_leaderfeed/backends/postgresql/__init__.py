"""PostgreSQL backend (``postgresql://``, ``postgres://``, Celery's ``db+postgresql://``).

The record of election ``NAME`` is the row ``name = NAME`` of table ``table`` (option, default
``leaderfeed``) in schema ``schema`` (option, default ``public``): columns ``format, holder,
token, term, version, nominee, renewed_at, history``. Schedule entries are rows ``(name,
entry, state)`` of ``<table>_schedule``, once-only marks rows ``(name, key, value,
expires_at)`` of ``<table>_marks``. ``create()`` makes whatever is missing under a
transaction-scoped advisory lock (so members starting at once never race on the catalog) and
refuses an existing table with another layout with a ``ConfigurationError`` naming it; a table
dropped later is made again by the next call.

Every primitive is one statement (see :mod:`.statements`), run in autocommit, so one
transaction: the compare-and-set of :mod:`~celery_leaderfeed.backends.transitions` on the row
locked ``FOR UPDATE``, time from the server's clock, and ``pg_notify`` of the written record
in the same transaction - delivered at commit, never for a write that did not commit. A
fenced schedule write locks the record row ``FOR SHARE``, so a claim that replaces the term
and the write are ordered; a subquery would read the term from the statement's snapshot, which
under READ COMMITTED can predate a claim that already committed.

Every write stamps the row with the server's history - ``system_identifier`` of the cluster
and the postmaster's start time: a restart (after a crash, with ``synchronous_commit=off`` or
from a backup) or a promoted standby has another one, so the record is *suspect* as after a
Redis restart, and only a claim, acted on one election timeout later, replaces it.

The feed is ``LISTEN`` on a channel per election, on a connection of its own (one more
connection per member): a lost connection makes ``poll`` raise at once, a silent one is found
by a ``SELECT 1`` after a heartbeat without traffic. Calls are bounded by the backend's timeout
through ``statement_timeout`` (lock waits included), ``tcp_user_timeout`` and keepalives;
connecting takes at least libpq's 2 s. A connection that failed is dropped and the next call
connects again. Not for a transaction-pooling PgBouncer (LISTEN needs a session). Not
fork-safe: connections are made in ``connect()`` or lazily, never in ``__init__``.
"""

from __future__ import annotations

from .backend import PostgresBackend
from .connection import DEFAULT_SCHEMA, DEFAULT_TABLE, libpq_url

__all__ = ["DEFAULT_SCHEMA", "DEFAULT_TABLE", "PostgresBackend", "libpq_url"]
