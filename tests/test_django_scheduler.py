"""``LeaderDatabaseScheduler`` in this process, against django-celery-beat's real models and
migrations on a PostgreSQL server the tests start, with clocks the test moves.

Django is configured here with ``settings.configure()`` (never ``DJANGO_SETTINGS_MODULE``, which
would make Celery's Django fix-up reach every other test's app). Each test gets its own rows and
its own election on the memory store; the due times come from the test's clock, while Django's
own timestamps (``date_changed``) are real.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import Celery

from harness.servers.postgres_process import PostgresServer
from tests.beat_support import T0, Clocks, HandLeadership, Sent, make_app


@pytest.fixture(scope="session")
def django_models(postgres_server: PostgresServer) -> Any:
    """Django set up on a database of its own, migrated with django-celery-beat's migrations."""
    import django
    from django.conf import settings

    from tests.django_project.settings import database

    if not settings.configured:
        settings.configure(
            DATABASES={"default": database(postgres_server.url(postgres_server.create_database()))},
            INSTALLED_APPS=["django_celery_beat"],
            USE_TZ=True,
            TIME_ZONE="UTC",
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        )
        django.setup()
    from django.core.management import call_command
    from django_celery_beat import models

    call_command("migrate", verbosity=0)
    return models


@pytest.fixture
def models(django_models: Any) -> Iterator[Any]:
    yield django_models
    django_models.PeriodicTask.objects.all().delete()
    django_models.IntervalSchedule.objects.all().delete()
    django_models.ClockedSchedule.objects.all().delete()
    django_models.CrontabSchedule.objects.all().delete()


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def app(store_url: str, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> Celery:
    app = make_app(store_url, beat_schedule={}, result_expires=None)
    monkeypatch.setattr(app, "send_task", sent)
    return app


class Beat:
    """A scheduler on the test's models, with leadership taken by hand."""

    def __init__(self, app: Celery, store_url: str, clocks: Clocks, member: str) -> None:
        from celery_leaderfeed.contrib.django_celery_beat import LeaderDatabaseScheduler

        self.clocks = clocks
        self.leadership = HandLeadership(store_url, "cluster", member)
        self.scheduler = LeaderDatabaseScheduler(
            app, leadership=self.leadership, clock=clocks.now, monotonic=clocks.monotonic
        )

    def run_for(self, seconds: float, step: float = 0.1) -> None:
        """Tick every ``step`` seconds of the test's clock."""
        end = self.clocks.wall + timedelta(seconds=seconds)
        while self.clocks.wall < end:
            self.scheduler.tick()
            self.clocks.advance(step)


@pytest.fixture
def beats(app: Celery, store_url: str, clocks: Clocks) -> Iterator[list[Beat]]:
    made: list[Beat] = []
    yield made
    for beat in made:
        beat.scheduler.close()


Member = Callable[..., Beat]


@pytest.fixture
def member(app: Celery, store_url: str, clocks: Clocks, beats: list[Beat]) -> Member:
    """``member(name, leading=True, app=...)``: a beat of the election, closed after the test."""

    def make(name: str, *, leading: bool = True, app: Celery = app) -> Beat:
        beat = Beat(app, store_url, clocks, name)
        beats.append(beat)
        if leading:
            beat.leadership.take()
        return beat

    return make


@pytest.fixture
def leader(member: Member) -> Beat:
    return member("leader")


def every(models: Any, name: str, seconds: float, **fields: Any) -> Any:
    interval, _ = models.IntervalSchedule.objects.get_or_create(
        every=round(seconds * 1_000_000), period=models.IntervalSchedule.MICROSECONDS
    )
    return models.PeriodicTask.objects.create(
        name=name, task="beat_app.pulse", interval=interval, **fields
    )


def dues(sent: Sent, name: str) -> list[datetime]:
    """Due times of ``name``'s sends, from their occurrence ids."""
    found = []
    for occurrence in sent.occurrences:
        entry, _, due = occurrence.rpartition("@")
        if entry == name:
            found.append(datetime.strptime(due, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=T0.tzinfo))
    return found


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- what is sent --------------------------------------------------------------------------------


def test_rows_are_sent_once_per_nominal_occurrence_and_recorded_with_it(
    models: Any,
    leader: Beat,
    sent: Sent,
) -> None:
    every(models, "pulse", 1.0)
    changes_before = models.PeriodicTasks.last_change()
    leader.run_for(3.55)
    assert dues(sent, "pulse") == [at(1), at(2), at(3)]
    row = models.PeriodicTask.objects.get(name="pulse")
    assert (row.last_run_at, row.total_run_count) == (at(3), 3)
    # Recording a run is an UPDATE: no signal, so no beat reloads its whole schedule for it.
    assert models.PeriodicTasks.last_change() == changes_before


def test_a_follower_writes_nothing_not_even_the_default_entries(
    models: Any,
    app: Celery,
    sent: Sent,
    member: Member,
) -> None:
    app.conf.beat_schedule = {"static": {"task": "beat_app.pulse", "schedule": 1.0}}
    every(models, "pulse", 1.0)
    follower = member("follower", leading=False)
    rows = list(models.PeriodicTask.objects.values())
    changes = models.PeriodicTasks.last_change()
    follower.run_for(3.0)
    assert sent.calls == []
    assert list(models.PeriodicTask.objects.values()) == rows
    assert models.PeriodicTasks.last_change() == changes
    follower.leadership.take()
    follower.run_for(2.05)
    assert models.PeriodicTask.objects.filter(name="static").exists()
    assert dues(sent, "pulse") == [at(4), at(5)]


def test_a_new_leader_continues_the_rows_of_the_last(
    models: Any,
    leader: Beat,
    sent: Sent,
    member: Member,
) -> None:
    every(models, "pulse", 1.0)
    leader.run_for(2.55)
    leader.leadership.drop()
    successor = member("successor")
    successor.run_for(2.0)
    assert dues(sent, "pulse") == [at(1), at(2), at(3), at(4)]
    row = models.PeriodicTask.objects.get(name="pulse")
    assert (row.last_run_at, row.total_run_count) == (at(4), 4)


# -- the gates -------------------------------------------------------------------------------------


def test_a_disabled_row_is_not_sent_and_an_edit_reaches_the_leader(
    models: Any,
    leader: Beat,
    sent: Sent,
) -> None:
    row = every(models, "pulse", 1.0)
    leader.run_for(2.55)
    row.enabled = False
    row.save()  # as the admin saves it: the change signal makes the leader reload
    leader.run_for(3.0)
    assert dues(sent, "pulse") == [at(1), at(2)]
    row.enabled = True
    row.interval = models.IntervalSchedule.objects.create(
        every=500_000, period=models.IntervalSchedule.MICROSECONDS
    )
    row.save()
    leader.run_for(1.2)
    # The missed runs coalesce into one send; then every 0.5 s from the last handled due time.
    sends = dues(sent, "pulse")
    assert sends[:3] == [at(1), at(2), at(5.5)]
    assert [b - a for a, b in itertools.pairwise(sends[2:])] == [timedelta(seconds=0.5)] * (
        len(sends) - 3
    )


def test_nothing_runs_before_the_start_time_and_the_first_run_is_at_it(
    models: Any,
    leader: Beat,
    sent: Sent,
) -> None:
    every(models, "pulse", 1.0, start_time=at(2.5))
    leader.run_for(4.0)
    assert dues(sent, "pulse") == [at(2.5), at(3.5)]


def test_no_run_due_after_the_expiry_is_sent_and_the_row_is_disabled(
    models: Any,
    leader: Beat,
    sent: Sent,
) -> None:
    every(models, "pulse", 1.0, expires=at(2.5))
    leader.run_for(5.0)
    assert dues(sent, "pulse") == [at(1), at(2)]
    assert models.PeriodicTask.objects.get(name="pulse").enabled is False


def test_a_one_off_row_runs_once_and_again_once_re_enabled(
    models: Any,
    leader: Beat,
    sent: Sent,
) -> None:
    row = every(models, "pulse", 1.0, one_off=True)
    leader.run_for(3.5)
    assert dues(sent, "pulse") == [at(1)]
    row.refresh_from_db()
    assert (row.enabled, row.total_run_count) == (False, 0)  # as django-celery-beat leaves it
    row.enabled = True
    row.save()
    leader.run_for(2.0)
    assert len(dues(sent, "pulse")) == 2


def test_a_clocked_row_runs_once_at_its_time_or_at_once_when_it_has_passed(
    models: Any,
    leader: Beat,
    sent: Sent,
) -> None:
    later = models.ClockedSchedule.objects.create(clocked_time=at(1.5))
    models.PeriodicTask.objects.create(
        name="later", task="beat_app.pulse", clocked=later, one_off=True
    )
    past = models.ClockedSchedule.objects.create(clocked_time=at(-60))
    models.PeriodicTask.objects.create(
        name="past", task="beat_app.pulse", clocked=past, one_off=True
    )
    leader.run_for(4.0)
    assert dues(sent, "later") == [at(1.5)]
    assert dues(sent, "past") == [at(-60)]
    assert not models.PeriodicTask.objects.filter(enabled=True).exists()


def test_a_one_off_sent_by_a_leader_that_died_before_recording_it_is_not_sent_again(
    models: Any,
    leader: Beat,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
    member: Member,
) -> None:
    every(models, "pulse", 1.0, one_off=True)

    def dies(*args: Any) -> None:
        raise SystemExit("killed between the send and recording it")

    monkeypatch.setattr(leader.scheduler, "record_run", dies)
    with pytest.raises(SystemExit):
        leader.run_for(1.5)
    leader.leadership.drop()
    successor = member("successor")
    successor.run_for(3.0)
    assert dues(sent, "pulse") == [at(1)]
    assert models.PeriodicTask.objects.get(name="pulse").enabled is False


# -- bad rows --------------------------------------------------------------------------------------


def test_a_row_that_cannot_be_scheduled_is_skipped_with_one_warning(
    models: Any,
    leader: Beat,
    sent: Sent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    crontab = models.CrontabSchedule(minute="99")
    crontab.save()
    models.PeriodicTask.objects.create(name="bad-cron", task="beat_app.pulse", crontab=crontab)
    zero = models.IntervalSchedule.objects.create(every=0, period=models.IntervalSchedule.SECONDS)
    models.PeriodicTask.objects.create(name="zero", task="beat_app.pulse", interval=zero)
    every(models, "pulse", 1.0)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        leader.run_for(3.05)
    assert dues(sent, "pulse") == [at(1), at(2), at(3)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "'bad-cron'" in w]) == 1, warnings
    assert len([w for w in warnings if "'zero'" in w]) == 1, warnings
    assert all(r.exc_info is None for r in caplog.records), "a traceback for a bad row"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("run_once", [1, 5]),  # one send for the gap, listing the missed runs
        ("skip", [1, 5]),  # the missed runs recorded as skipped
        ("catch_up", [1, 3, 4, 5]),  # the most recent two missed runs sent (limit 2)
    ],
)
def test_every_misfire_policy_handles_a_gap_between_leaders(
    models: Any,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    expected: list[int],
    member: Member,
) -> None:
    app = make_app(
        store_url,
        beat_schedule={},
        result_expires=None,
        leaderfeed_misfire_policy=policy,
        leaderfeed_catch_up_limit=2,
    )
    monkeypatch.setattr(app, "send_task", sent)
    every(models, "pulse", 1.0)
    first = member("first", app=app)
    first.run_for(1.5)
    first.leadership.drop()
    clocks.advance(3.6)  # no leader while runs 2, 3 and 4 fall due
    second = member("second", app=app)
    second.run_for(0.3)
    assert dues(sent, "pulse") == [at(seconds) for seconds in expected]
    row = models.PeriodicTask.objects.get(name="pulse")
    assert (row.last_run_at, row.total_run_count) == (at(5), len(expected))


def test_runs_due_before_an_edit_are_not_a_backlog_even_under_catch_up(
    models: Any,
    store_url: str,
    clocks: Clocks,
    sent: Sent,
    monkeypatch: pytest.MonkeyPatch,
    member: Member,
) -> None:
    """Disabled for six periods, then enabled again: one run at once, as django-celery-beat
    does, not six sent as missed ones."""
    app = make_app(
        store_url, beat_schedule={}, result_expires=None, leaderfeed_misfire_policy="catch_up"
    )
    monkeypatch.setattr(app, "send_task", sent)
    row = every(models, "pulse", 1.0)
    leader = member("leader", app=app)
    leader.run_for(1.55)
    row.enabled = False
    row.save()
    leader.run_for(6.0)
    row.enabled = True
    row.save()
    # date_changed is Django's real clock; put the edit on the test's timeline.
    models.PeriodicTask.objects.filter(pk=row.pk).update(date_changed=clocks.now())
    leader.run_for(2.05)
    assert dues(sent, "pulse") == [at(1), at(7), at(8), at(9)]
