"""RedBeat's ``RedBeatScheduler``, leader-gated: ``celery beat -S leaderfeed-redbeat``.

Entries stay in RedBeat's Redis keys and are still created at runtime with
``RedBeatSchedulerEntry(...).save()``; the election replaces RedBeat's lock, so no
``redbeat::lock`` key is ever taken and every standby reaches its beat loop (RedBeat's own lock
parks standbys in ``beat_init`` before they can take over).

The leader reads *every* entry each tick (RedBeat's ``schedule`` returns only the due ones),
plans nominal occurrences, claims and sends each, then writes the entry's meta as RedBeat does -
``last_run_at`` (the run's nominal due time), ``total_run_count`` - and its score in the
schedule's sorted set. ``enabled=False`` entries send nothing. An entry whose definition or
meta cannot be read, or whose definition names another key, is skipped with one warning naming
its key (again if it breaks again after a repair); the others keep running. A new entry starts
from the ``last_run_at`` in its meta - for one saved with ``save()``, when it was saved, as
under RedBeat - and a known one from the state its last leader claimed. An ``rrule`` with a
``count`` or an ``until`` sends its last run, then stops (score -1, as RedBeat marks it).

RedBeat's Redis unreachable: the leader sends nothing, says so in one line and resumes when
it answers (runs missed meanwhile go by the misfire policy). Give RedBeat's client a socket
timeout, ``redbeat_redis_options = {"socket_timeout": ..., "socket_connect_timeout": ...}``:
without one, a server that stops answering without closing the connection blocks the leader's
tick until it answers. RedBeat's ``retry_period`` option retries inside the tick as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from ..celery._extras import needs_extra

with needs_extra("redbeat", frozenset({"redbeat", "redis"}), "LeaderRedBeatScheduler"):
    import redis
    from redbeat.schedulers import RedBeatScheduler, get_redis

from ..celery.leader_gated import OPEN, Gate, LeaderGatedMixin, ScheduleSourceUnavailable
from ..celery.occurrences import EntryState, PlannedRun
from ..urls import redact_url

__all__ = ["LeaderRedBeatScheduler"]

logger = logging.getLogger("celery_leaderfeed.beat")


@contextlib.contextmanager
def _redbeat_redis(app: Any, doing: str) -> Iterator[None]:
    """Map a Redis error to :class:`ScheduleSourceUnavailable`, naming the server (password
    hidden) and what was being done."""
    try:
        yield
    except redis.RedisError as exc:
        where = redact_url(str(app.redbeat_conf.redis_url))
        raise ScheduleSourceUnavailable(
            f"RedBeat's Redis ({where}), {doing}: {type(exc).__name__}: {exc}"
        ) from exc


class LeaderRedBeatScheduler(LeaderGatedMixin, RedBeatScheduler):  # type: ignore[misc]
    """``RedBeatScheduler`` whose due entries are sent by the elected beat only."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        #: Keys of the entries that cannot be read, each reported once while it stays so.
        self._unreadable: set[str] = set()
        super().__init__(app, *args, **kwargs)

    def start_term(self) -> None:
        with _redbeat_redis(self.app, "saving the static entries"):
            super().start_term()  # the first term: RedBeat's setup_schedule

    def leader_entries(self) -> Iterable[Any]:
        conf = self.app.redbeat_conf
        client = get_redis(self.app)
        with _redbeat_redis(self.app, "listing the entries"):
            keys = client.zrange(conf.schedule_key, 0, -1)
            with client.pipeline() as pipe:
                for key in keys:
                    pipe.hget(key, "definition")
                    pipe.hget(key, "meta")
                fields = pipe.execute()
        entries = []
        for index, key in enumerate(keys):
            definition, meta = fields[2 * index], fields[2 * index + 1]
            if definition is None:
                continue  # deleted since the ZRANGE
            name = key.decode() if isinstance(key, bytes) else str(key)
            try:
                entries.append(self._entry(name, definition, meta))
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the others
                self._report_unreadable(name, exc)
            else:
                if name in self._unreadable:
                    self._unreadable.discard(name)
                    logger.info("beat: RedBeat entry %r can be read again", name)
        return entries

    def _report_unreadable(self, key: str, exc: Exception) -> None:
        """One warning per key while it stays unreadable; the other entries keep running."""
        if key in self._unreadable:
            return
        self._unreadable.add(key)
        logger.warning(
            "beat: skipping RedBeat entry %r: cannot read it (%s: %s)",
            key,
            type(exc).__name__,
            exc,
        )

    def _entry(self, key: str, definition: Any, meta: Any) -> Any:
        """An entry as ``RedBeatSchedulerEntry.from_key`` builds it, from fields already read.

        Its definition must name it by its key: the schedule state and the occurrence ids are
        keyed by the name, so a definition without one (or copied under another key) would
        share another entry's runs."""
        fields = self.Entry.decode_definition(definition)
        decoded = self.Entry.decode_meta(meta)
        if not isinstance(fields, dict) or not isinstance(decoded, dict):
            raise ValueError("definition and meta must be JSON objects")
        name = fields.get("name")
        if not isinstance(name, str) or self.Entry.generate_key(self.app, name) != key:
            raise ValueError(f"its definition names it {name!r}, which is not this key")
        fields.update(decoded)
        entry = self.Entry(app=self.app, **fields)
        entry.last_run_at = decoded.get("last_run_at")
        return entry

    def entry_gate(self, entry: Any, now: datetime, state: EntryState) -> Gate:
        return OPEN if entry.enabled else Gate(open=False, reason="disabled")

    def entry_anchor(self, entry: Any, now: datetime) -> datetime:
        last_run_at = entry.last_run_at
        if isinstance(last_run_at, datetime) and last_run_at.tzinfo is not None:
            return last_run_at
        return now

    def record_run(self, entry: Any, run: PlannedRun, state: EntryState) -> None:
        """RedBeat's meta and score, from the nominal due time (as its ``reschedule`` writes
        them, plus the run count)."""
        assert run.send is not None
        entry.last_run_at = run.send
        entry.total_run_count = (entry.total_run_count or 0) + 1
        meta = {"last_run_at": run.send, "total_run_count": entry.total_run_count}
        encoded = json.dumps(meta, cls=_encoder())
        client = get_redis(self.app)
        with _redbeat_redis(self.app, "recording a run"), client.pipeline() as pipe:
            pipe.hset(entry.key, "meta", encoded)
            # RedBeat's score: the next due time, -1 once a finite rrule has no run left.
            pipe.zadd(self.app.redbeat_conf.schedule_key, {entry.key: entry.score})
            pipe.execute()


def _encoder() -> type[json.JSONEncoder]:
    from redbeat.decoder import RedBeatJSONEncoder  # noqa: PLC0415

    return RedBeatJSONEncoder  # type: ignore[no-any-return]
