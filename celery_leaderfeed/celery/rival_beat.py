"""Notice a standalone beat election running beside embedded beats.

``celery worker -B`` with the step follows the workers' election; standalone ``celery beat``
elects in ``leaderfeed_beat_name`` and keeps its own schedule state. Both kinds at once means
two leaders that each send every run, and nothing in either election can see it. The leading
embedded beat therefore looks at the standalone election now and then and logs an error while
someone holds it and keeps renewing.

Liveness is judged without clocks: the holder is live if the record's version advanced between
two looks (every renewal raises it), so a record a crashed beat left behind never alarms. While
the store fails, looks back off (up to 16 times apart); the schedule's own calls report it.
"""

from __future__ import annotations

import logging
import random

from ..backends import Backend
from ..engine.retry import Backoff
from ..errors import BackendUnavailable

__all__ = ["RivalBeatWatch"]

logger = logging.getLogger("celery_leaderfeed.beat")


class RivalBeatWatch:
    """Reads the standalone beat election's record at most every ``every`` seconds."""

    def __init__(self, store: Backend, every: float) -> None:
        self._store = store
        self._every = every
        self._backoff = Backoff(random.Random(), 2 * every, 16 * every)
        self._next_look = float("-inf")
        self._connected = False
        #: (holder, version) at the previous look.
        self._seen: tuple[str, int] | None = None
        #: The holder already reported, so one rival is reported once.
        self._reported: str | None = None

    def look(self, now: float) -> None:
        """Log an error if a standalone beat leads too; cheap unless a look is due."""
        if now < self._next_look:
            return
        self._next_look = now + self._every
        try:
            if not self._connected:
                self._store.connect()
                self._connected = True
            record = self._store.read().record
        except BackendUnavailable as exc:
            self._next_look = now + self._backoff.next(exc)
            return  # the schedule's own store calls report outages
        self._backoff.reset()
        if record is None or record.holder is None:
            self._seen = self._reported = None
            return
        seen, self._seen = self._seen, (record.holder, record.version)
        if seen is None or seen[0] != record.holder:
            return
        if seen[1] == record.version:
            self._reported = None  # not renewing: gone, or stopped
        elif self._reported != record.holder:
            self._reported = record.holder
            logger.error(
                "beat: a standalone beat (%s) leads election %r while this worker's embedded "
                "beat leads too; each sends every periodic task: run beat one way only",
                record.holder,
                self._store.name,
            )

    def close(self) -> None:
        self._store.close()
