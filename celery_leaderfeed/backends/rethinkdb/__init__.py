"""RethinkDB backend (``rethinkdb://``): one document per election, changed by ``r.branch``.

The record of election ``NAME`` is the document ``{id: NAME, format, holder, token, term,
version, nominee, renewed_at, schedule}`` in table ``table`` (option, default ``leaderfeed``,
primary key ``id``) of the URL's database (default ``leaderfeed``). ``create()`` makes both if
missing ("already exists" from a racing member is fine) and, once called, they are made again
when the server has lost them (restarted empty). In a cluster of several servers concurrent
creation can make two tables of one name: create them beforehand there.

Each write is one query: it binds ``r.now()``, runs ``get(NAME).replace(lambda doc:
r.branch(compare, new_doc, doc))`` with the compare-and-set of :mod:`.transitions`, and reads
the document back so a refusal reports what refused it. The server decides "is this a record"
by :func:`~celery_leaderfeed.record.decode_record`'s rules (format, field types), so foreign
data is never taken for one; replies are decoded by ``decode_record`` itself. Time is the
server's: ``renewed_at`` is ``r.now()`` in epoch seconds, a fresh term or version its floor in
milliseconds. Schedule entries live in the record (keys prefixed ``entry:``, so no name can be
ReQL's reserved ``$reql_type$``): one conditional replace fences an entry on term and token.

A subscription opens two connections of its own: a point changefeed on the record with
``include_initial`` (its first value is awaited, so the feed is live before the engine reads,
but not passed on: that read supersedes it) and a table changefeed whose changes to documents
other than leader records become ``change`` events. A thread per feed blocks on its cursor and
queues what arrives; ``poll`` waits on the queue, and ``close`` shuts the sockets down, which
ends the threads.

Timeouts: the driver's ``run()`` has none and puts its socket back in blocking mode
(``settimeout(None)``) before every read, so a socket timeout bounds nothing. Sockets get kernel
timeouts instead (``SO_RCVTIMEO``/``SO_SNDTIMEO``, which ``settimeout`` leaves alone), set before
each query to what is left of the call's ``timeout``: a server that stops answering fails the
read with the driver's ``ReqlTimeoutError``. Connecting is bounded by the driver's ``timeout``.
A connection that failed is dropped and the next call connects again. Not fork-safe:
connections are made in ``connect()`` (or lazily), never in ``__init__``.
"""

from __future__ import annotations

from .backend import RethinkBackend
from .connection import DEFAULT_DB, DEFAULT_PORT, DEFAULT_TABLE

__all__ = ["DEFAULT_DB", "DEFAULT_PORT", "DEFAULT_TABLE", "RethinkBackend"]
