"""The occurrence ledger: each schedule entry's state in the store, read and claimed under one
leader term at a time.

A leader reads the stored states only after its term began, so they include every claim made
before it. It then *claims* each change of an entry's state (a new entry's anchor, a rebuilt
state, a planned run, the confirmation that a run was published) with ``Backend.write_entry``:
a compare-and-set on the state it read, fenced atomically on the leader record's term and
token. A leader whose term has ended cannot claim, and of two writers racing for one occurrence
only one wins. A refused claim makes the ledger read the states again before its next claim.
A claimed run stays *pending* in its state (:class:`~.occurrences.PendingPublish`) until a
second claim confirms its publish, so a run whose publish failed, or whose leader died before
confirming, is published again under the same task id by whoever leads next.

A stored state whose ``pending`` record alone is corrupt keeps its counts and due time; its
pending run can only be the one due at ``last_due`` (a claim advances ``last_due`` to the run it
sends), so it is rebuilt from there, with a warning, and published again under its
deterministic task id: consumers run it at most once (see ``celery.once``).

A stored state that is corrupt, or due further ahead than its schedule explains (a leader whose
clock ran ahead wrote it), is rebuilt from now with a warning; when the store's clock agrees
with the state, the fault is this process's clock and the state is kept (also with a warning).

The ledger decides nothing about what is due or when to send: a scheduler asks it for states
and claims what it plans (see :mod:`~celery_leaderfeed.celery.occurrences`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from ..backends.base import Backend, Refusal
from ..errors import BackendUnavailable
from .occurrences import (
    CorruptState,
    EntryState,
    PendingPublish,
    beyond_schedule,
    format_due,
    occurrence_id,
    task_id_for,
)

__all__ = ["Claim", "OccurrenceLedger"]

logger = logging.getLogger("celery_leaderfeed.beat")


class Claim(enum.Enum):
    """What a fenced write of an entry's state came to."""

    #: Written: the state is this leader's to act on.
    CLAIMED = "claimed"
    #: Not written: the term has ended or another writer moved the state. The ledger reads the
    #: states again before its next claim.
    REFUSED = "refused"


class OccurrenceLedger:
    """The schedule states of one election, as its store holds them.

    One scheduler loop owns it (not thread-safe). ``clock`` is that scheduler's UTC now.
    """

    def __init__(self, store: Backend, clock: Callable[[], datetime]) -> None:
        self.store = store
        self._clock = clock
        self._connected = False
        #: (term, token) the states were read under; None: read them again before claiming.
        self._read_under: tuple[int, str] | None = None
        #: Each entry's state as last read or written: what its next claim expects to replace.
        self._states: dict[str, str] = {}
        self._refusals = 0
        #: ((term, token), the store's clock minus ours): measured once per term, when needed.
        self._clock_offset: tuple[tuple[int, str] | None, timedelta | None] | None = None
        self._clock_behind_warned: set[str] = set()

    @property
    def refusals(self) -> int:
        """Claims refused in a row, since the last one written or :meth:`forget`."""
        return self._refusals

    def read(self, term: int, token: str) -> None:
        """Read the stored states under ``term`` (after it began, so they hold every older
        claim), unless they were read under it and no claim was refused since."""
        if self._read_under == (term, token):
            return
        self._read_under = None
        if not self._connected:
            self.store.connect()
            self._connected = True
        self._states = self.store.read_entries()
        self._read_under = (term, token)

    def state(
        self, name: str, schedule: Any, now: datetime, *, term: int, anchor: datetime | None = None
    ) -> tuple[EntryState, bool]:
        """``name``'s state, and whether it was rebuilt and must be claimed before use: a
        missing state is anchored at ``anchor`` (default ``now``); a corrupt one, or one from
        the future, is rebuilt from ``now`` (its counts kept) under ``term``."""
        state = self._decode(name, self._states.get(name))
        if state is None:
            return EntryState.anchored(now if anchor is None else anchor, term), True
        if state.pending_corrupt:
            state = self._rebuilt_pending(name, state)
        with self._unread_on_failure():
            if self._from_the_future(name, schedule, state, now):
                return state.rebased(now, term), True
        return state, False

    def claim(self, term: int, token: str, name: str, new: EntryState) -> Claim:
        """Write ``new`` over ``name``'s state as last read or written here, while the leader
        record shows ``term`` and ``token``. Raises :class:`BackendUnavailable`."""
        expected = self._states.get(name)
        with self._unread_on_failure():
            return self._write(term, token, name, expected, new.encode())

    @property
    def election(self) -> str:
        """The election whose schedule this is: it names every run's task id."""
        return self.store.name

    def forget(self) -> None:
        """This process stopped leading: read again under its next term, refusals forgotten."""
        self._read_under = None
        self._refusals = 0

    def close(self) -> None:
        self._read_under = None
        self.store.close()

    def why_refused(self, term: int, token: str) -> BackendUnavailable:
        """What the leader record says about claims under ``term`` that keep being refused."""
        try:
            record = self.store.read().record
        except BackendUnavailable as exc:
            return exc
        if record is not None and (record.term, record.token) == (term, token):
            return BackendUnavailable(
                f"claims under term {term} keep being refused though the store shows "
                f"that term: another scheduler writes the same schedule state under it"
            )
        shown = "no leader record" if record is None else f"term {record.term} of {record.holder}"
        return self.store.refused(
            Refusal(
                f"the store shows {shown}, not this leader's term {term}, so every "
                f"claim on the schedule state is refused",
                "give beat the same store as its election, in every process: the same "
                "leaderfeed_backend and leaderfeed_backend_options (key_prefix...)",
            ),
            f"election {self.store.name!r}",
        )

    # -- writing -------------------------------------------------------------------------------

    def _write(self, term: int, token: str, name: str, expected: str | None, new: str) -> Claim:
        if self.store.write_entry(term, token, name, expected, new):
            self._states[name] = new
            self._refusals = 0
            return Claim.CLAIMED
        self._refusals += 1
        if self._refusals == 1:  # the caller reports those that follow in a row
            logger.info(
                "beat: claim on %r refused (term %d has ended or the state changed)", name, term
            )
        self._read_under = None
        return Claim.REFUSED

    @contextlib.contextmanager
    def _unread_on_failure(self) -> Iterator[None]:
        """A store call that got no answer may still have been applied: read again."""
        try:
            yield
        except BackendUnavailable:
            self._read_under = None
            raise

    # -- reading -------------------------------------------------------------------------------

    def _decode(self, name: str, raw: str | None) -> EntryState | None:
        if raw is None:
            return None
        try:
            return EntryState.decode(raw)
        except CorruptState as exc:
            logger.warning("beat: stored state of %r is corrupt (%s); rebuilding it", name, exc)
            return None

    def _rebuilt_pending(self, name: str, state: EntryState) -> EntryState:
        occurrence = occurrence_id(name, state.last_due)
        pending = PendingPublish(occurrence, task_id_for(self.election, occurrence), state.term)
        logger.warning(
            "beat: stored state of %r has a corrupt pending publish; rebuilt as %s (task id %s),"
            " published again under that id (consumers run it at most once)",
            name,
            occurrence,
            pending.task_id,
        )
        return replace(state, pending=pending, pending_corrupt=False)

    def _from_the_future(self, name: str, schedule: Any, state: EntryState, now: datetime) -> bool:
        """Whether ``state`` is due further ahead than ``schedule`` explains, by our clock and
        by the store's: a leader whose clock ran ahead wrote it, and trusting it would silence
        the entry until our clock caught up. When only our clock says so, the fault is ours:
        the entry waits, with a warning."""
        if not _beyond(schedule, state.last_due, now):
            return False
        store_now = self._store_now(now)
        if store_now is not None and not _beyond(schedule, state.last_due, store_now):
            if name not in self._clock_behind_warned:
                self._clock_behind_warned.add(name)
                logger.warning(
                    "beat: this scheduler's clock is %.1f s behind the store's, so %r waits "
                    "for its stored due time %s: set this host's clock right (NTP)",
                    (store_now - now).total_seconds(),
                    name,
                    format_due(state.last_due),
                )
            return False
        logger.warning(
            "beat: stored state of %r says its last run was due at %s, %.1f s ahead of %s "
            "clock and past the schedule's next due time: written by a leader whose clock runs "
            "ahead? Rebuilding it from now",
            name,
            format_due(state.last_due),
            (state.last_due - (store_now or now)).total_seconds(),
            "this scheduler's" if store_now is None else "the store's",
        )
        return True

    def _store_now(self, now: datetime) -> datetime | None:
        """``now`` by the store's clock (None: the backend does not tell); its offset from ours
        is measured with one read, once per term."""
        if self._clock_offset is None or self._clock_offset[0] != self._read_under:
            store_time = self.store.read().store_time
            offset = (
                None
                if store_time is None or not math.isfinite(store_time)
                else datetime.fromtimestamp(store_time, timezone.utc) - self._clock()
            )
            self._clock_offset = (self._read_under, offset)
        offset = self._clock_offset[1]
        return None if offset is None else now + offset


def _beyond(schedule: Any, last_due: datetime, now: datetime) -> bool:
    """:func:`beyond_schedule`, False for a broken schedule (its scheduler reports that when it
    computes the next run)."""
    try:
        return beyond_schedule(schedule, last_due, now)
    except Exception:  # noqa: BLE001 - reported where the next run is computed
        return False
