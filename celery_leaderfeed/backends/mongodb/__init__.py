"""MongoDB backend (``mongodb://``, ``mongodb+srv://``): one document per election.

The record of election ``NAME`` is the document ``{_id: NAME, format, holder, token, term,
version, nominee, renewed_at, schedule}`` in the collection ``collection`` (default
``leaderfeed``). Every write is one ``find_one_and_update`` whose filter is the compare of
:mod:`~celery_leaderfeed.backends.transitions` and whose update is an aggregation pipeline, so
the new term and version are computed from the stored ones and ``renewed_at`` comes from the
server's ``$$NOW``, all in one atomic step. Claiming over foreign data replaces the document
only while it is still foreign. Schedule entries live in the same document under ``schedule``
(keys escaped), so a fenced entry write is one filtered update too; record reads and writes
project ``schedule`` away. Needs MongoDB >= 4.2; majority write and read concern are used
when the server is a replica set or mongos.

Members hear about writes in one of two ways, chosen at connect from ``hello``
(``notify="auto"``) or forced with ``notify``:

* ``changestream`` (replica sets, sharded clusters, Atlas): a change stream on the collection,
  opened at "now". Each state of the record is rebuilt exactly from the events (an update
  event carries only what changed), so every write is delivered, in order.
* ``capped`` (standalone servers; the original leaderfeed's design): after each successful
  write the writer inserts the new record into the capped collection ``capped_collection``
  (default ``<collection>_events``; 100,000 bytes, 20 documents), which members follow with a
  tailable await cursor. Documents already there when a member subscribes are skipped, so old
  history is never replayed. A lost announcement only delays followers: the engine reads the
  record whenever the feed looks deaf. Subscribing also makes sure the capped collection
  exists: a server that lost it (a restart) would otherwise get a plain one from the next
  announcement, which cannot be tailed.

Other documents in the watched collection are reported as ``change`` events (the raw change
event, or the inserted capped document). A broken stream or dead cursor makes ``poll`` raise;
the engine then reads at the heartbeat interval and subscribes again with backoff.
"""

from __future__ import annotations

from .backend import MongoBackend

__all__ = ["MongoBackend"]
