"""django-celery-beat's ``DatabaseScheduler``, leader-gated: ``celery beat -S leaderfeed-django``.

Schedules stay in the database and the admin; every beat process may run, one sends. What each
``PeriodicTask`` field means is kept, with the election deciding who acts on it:

=====================  ========================================================================
field                  what it means here
=====================  ========================================================================
``enabled``            a disabled row sends nothing; an admin edit reaches the leader at its
                       next change check (each tick, at most a heartbeat apart)
``start_time``         nothing before it; an interval task's first run is *at* it (as in
                       django-celery-beat), a crontab's first slot at or after it
``expires``            no run due after it; the leader then disables the row
``one_off``            one run, then the leader disables the row (re-enabling it runs it again)
``clocked``            one run at its time (at once if the time has passed, as in
                       django-celery-beat)
``last_run_at``,       written by the leader after each send: the run's *nominal* due time and
``total_run_count``    one more send; never by a follower, never with a save that would make
                       every beat reload its schedule
=====================  ========================================================================

Where a run starts: a task that ran before under django-celery-beat (``total_run_count > 0``)
continues from its ``last_run_at``; a new one starts when the leader first sees it.

The database down: the leader sends nothing it cannot see and retries at a bounded rate; runs
missed meanwhile are handled by the misfire policy when it returns. A row whose schedule cannot
be built or computed is skipped with one warning naming it; the others keep running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from ..celery._extras import needs_extra

with needs_extra("django", frozenset({"django", "django_celery_beat"}), "LeaderDatabaseScheduler"):
    from django.conf import settings as django_settings
    from django.db import DatabaseError, InterfaceError, close_old_connections, transaction
    from django.db.models import F
    from django.utils import timezone as django_timezone
    from django_celery_beat.clockedschedule import clocked
    from django_celery_beat.models import PeriodicTask, PeriodicTasks
    from django_celery_beat.schedulers import DatabaseScheduler

from celery.schedules import schedule as interval_schedule
from celery.utils.time import maybe_make_aware

from ..celery.leader_gated import OPEN, Gate, LeaderGatedMixin, ScheduleSourceUnavailable
from ..celery.occurrences import EntryState, PlannedRun

__all__ = ["LeaderDatabaseScheduler"]

_MICROSECOND = timedelta(microseconds=1)


@contextlib.contextmanager
def _database(doing: str) -> Iterator[None]:
    """Database errors as :class:`ScheduleSourceUnavailable` (the leader backs off); the
    broken connection is dropped so the next try opens a new one."""
    try:
        yield
    except (DatabaseError, InterfaceError) as exc:
        with contextlib.suppress(Exception):
            close_old_connections()
        raise ScheduleSourceUnavailable(
            f"django-celery-beat's database, {doing}: {type(exc).__name__}: {exc}"
        ) from exc


def _aware(moment: datetime) -> datetime:
    """A model's datetime as aware UTC (naive ones are UTC, as Celery reads them)."""
    return maybe_make_aware(moment).astimezone(timezone.utc)  # type: ignore[no-any-return]


def _for_model(moment: datetime) -> datetime:
    """A UTC datetime as the model field stores it (naive in the default zone without USE_TZ)."""
    if getattr(django_settings, "USE_TZ", True):
        return moment
    naive: datetime = django_timezone.make_naive(moment)
    return naive


class LeaderDatabaseScheduler(LeaderGatedMixin, DatabaseScheduler):  # type: ignore[misc]
    """``DatabaseScheduler`` whose due rows are sent by the elected beat only."""

    # -- the schedule ----------------------------------------------------------------------------

    def start_term(self) -> None:
        """A new term reads every row afresh: what was edited while this process followed."""
        self._initial_read = True
        self._schedule = None
        self._dirty.clear()
        with _database("reading the periodic tasks"):
            super().start_term()  # the first term: DatabaseScheduler.setup_schedule
            self.schedule  # noqa: B018 - the initial read

    def leader_entries(self) -> Iterable[Any]:
        with _database("checking for changes"):
            return list(self.schedule.values())

    def schedule_changed(self) -> bool:
        """Whether a row changed since the last check; raises when the database is down
        (django-celery-beat logs a traceback and goes on with the rows it has)."""
        with _database("checking for changes"):
            close_old_connections()
            with contextlib.suppress(transaction.TransactionManagementError):
                transaction.commit()  # see a REPEATABLE READ database's newer rows
            last: datetime | None = getattr(self, "_last_timestamp", None)
            current: datetime | None = self.Changes.last_change()
            self._last_timestamp = current
        return bool(current and current > (last or current))

    def all_as_schedule(self) -> dict[str, Any]:
        """The enabled rows; one that cannot become an entry is skipped with one warning."""
        entries = {}
        for model in self.enabled_models():
            try:
                entries[model.name] = self.Entry(model, app=self.app)
            except ValueError as exc:
                self._report_broken(model.name, exc)
        return entries

    # -- the gates -------------------------------------------------------------------------------

    def entry_gate(self, entry: Any, now: datetime, state: EntryState) -> Gate:
        model = entry.model
        if not model.enabled:
            return Gate(open=False, reason="disabled")
        if model.start_time is not None and now < _aware(model.start_time):
            start = _aware(model.start_time)
            return Gate(open=False, reopens=start, reason=f"starts at {start.isoformat()}")
        expires = None if model.expires is None else _aware(model.expires)
        if expires is not None and now >= expires:
            self._update(model, "disabling an expired task", enabled=False)
            return Gate(open=False, reason="expired")
        if model.one_off and self._ran_once(model, state):
            self._update(model, "disabling a one-off task", enabled=False, total_run_count=0)
            with _database("disabling a one-off task"):
                PeriodicTasks.update_changed()
            return Gate(open=False, reason="one-off task already ran")
        return OPEN if expires is None else Gate(until=expires)

    @staticmethod
    def _ran_once(model: Any, state: EntryState) -> bool:
        """Whether a one-off row has run since it was last enabled or edited: its count says
        so, or the ledger recorded a send after the row's last change (a leader that died
        between sending and recording)."""
        if model.total_run_count > 0:
            return True
        changed = model.date_changed
        return state.sent_at is not None and (
            changed is None or state.sent_at >= _aware(changed).timestamp()
        )

    def entry_anchor(self, entry: Any, now: datetime) -> datetime:
        model, schedule = entry.model, entry.schedule
        if isinstance(schedule, clocked):
            return _aware(schedule.clocked_time) - _MICROSECOND
        if model.start_time is not None and model.total_run_count == 0:
            start = _aware(model.start_time)
            if type(schedule) is interval_schedule and not schedule.relative:
                period: timedelta = schedule.run_every
                return start - period
            return start - _MICROSECOND
        if model.last_run_at is not None and model.total_run_count > 0:
            return _aware(model.last_run_at)
        return now

    def entry_changed_at(self, entry: Any) -> datetime | None:
        changed = entry.model.date_changed  # set by every save(), the admin's included
        return None if changed is None else _aware(changed)

    # -- the metadata ----------------------------------------------------------------------------

    def record_run(self, entry: Any, run: PlannedRun, state: EntryState) -> None:
        """``last_run_at`` = the nominal due time, one more run; an UPDATE that neither fires
        the signal that makes every beat reload nor overwrites fields edited meanwhile."""
        assert run.send is not None
        model = entry.model
        due = _for_model(run.send)
        runs = F("total_run_count") + 1
        self._update(model, "recording a run", last_run_at=due, total_run_count=runs)
        model.last_run_at = entry.last_run_at = due
        model.total_run_count += 1
        entry.total_run_count = model.total_run_count

    def _update(self, model: Any, doing: str, **fields: Any) -> None:
        with _database(doing):
            PeriodicTask.objects.filter(pk=model.pk).update(**fields)
        for name, value in fields.items():
            if not hasattr(value, "resolve_expression"):  # F() expressions: the caller sets them
                setattr(model, name, value)
