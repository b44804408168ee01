"""RivalBeatWatch: an embedded beat notices a standalone beat that leads beside it."""

from __future__ import annotations

import logging
import uuid

import pytest

from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.backends.memory import MemoryBackend
from celery_leaderfeed.celery.rival_beat import RivalBeatWatch
from harness.helpers import closed_port_url

EVERY = 4.0


class StandaloneBeat:
    """The standalone election's record, driven by hand."""

    def __init__(self, url: str, holder: str = "beat@other:1") -> None:
        self.backend = MemoryBackend(url, name="proj.beat")
        self.holder = holder
        self.token = uuid.uuid4().hex
        self.term = 0

    def claim(self) -> None:
        result = self.backend.claim(
            self.backend.read().version, self.holder, self.token, min_term=0, min_version=0
        )
        assert result.ok and result.observation.record is not None
        self.term = result.observation.record.term

    def renew(self) -> None:
        assert self.backend.renew(self.term, self.token).ok

    def resign(self) -> None:
        assert self.backend.resign(self.term, self.token).ok


@pytest.fixture
def url() -> str:
    return f"memory://rival-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def watch(url: str) -> RivalBeatWatch:
    return RivalBeatWatch(MemoryBackend(url, name="proj.beat"), every=EVERY)


def renewing_rival(url: str, watch: RivalBeatWatch) -> StandaloneBeat:
    """A standalone beat that the watch saw once and that renewed since."""
    rival = StandaloneBeat(url)
    rival.claim()
    watch.look(0.0)
    rival.renew()
    return rival


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_renewing_standalone_leader_is_reported_once(
    url: str, watch: RivalBeatWatch, caplog: pytest.LogCaptureFixture
) -> None:
    rival = renewing_rival(url, watch)
    assert errors(caplog) == []  # one look cannot tell a live holder from a dead one
    watch.look(EVERY)
    [message] = errors(caplog)
    assert "beat@other:1" in message and "'proj.beat'" in message
    for n in range(2, 6):
        rival.renew()
        watch.look(EVERY * n)
    assert len(errors(caplog)) == 1


def test_a_record_left_by_a_dead_beat_is_not_reported(
    url: str, watch: RivalBeatWatch, caplog: pytest.LogCaptureFixture
) -> None:
    StandaloneBeat(url).claim()  # then it crashed: the version never moves again
    for n in range(5):
        watch.look(EVERY * n)
    assert errors(caplog) == []


def test_looks_are_spaced_by_the_interval(
    url: str, watch: RivalBeatWatch, caplog: pytest.LogCaptureFixture
) -> None:
    renewing_rival(url, watch)
    watch.look(EVERY / 2)  # too soon: no read, so the renewal is not seen yet
    assert errors(caplog) == []
    watch.look(EVERY)
    assert len(errors(caplog)) == 1


def test_a_rival_that_resigned_and_came_back_is_reported_again(
    url: str, watch: RivalBeatWatch, caplog: pytest.LogCaptureFixture
) -> None:
    rival = renewing_rival(url, watch)
    watch.look(EVERY)
    rival.resign()
    watch.look(2 * EVERY)  # vacant: nothing to report
    assert len(errors(caplog)) == 1
    rival.claim()
    watch.look(3 * EVERY)
    rival.renew()
    watch.look(4 * EVERY)
    assert len(errors(caplog)) == 2


def test_a_new_holder_needs_two_looks_of_its_own(
    url: str, watch: RivalBeatWatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = StandaloneBeat(url, holder="beat@one:1")
    first.claim()
    watch.look(0.0)
    second = StandaloneBeat(url, holder="beat@two:2")
    second.claim()  # a version change, but by a different holder: not proof that one renews
    watch.look(EVERY)
    assert errors(caplog) == []
    second.renew()
    watch.look(2 * EVERY)
    assert "beat@two:2" in errors(caplog)[0]


def test_an_unreachable_store_is_left_to_the_schedule_to_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = backend_from_url(closed_port_url("redis"), name="proj.beat", timeout=0.2)
    watch = RivalBeatWatch(store, every=EVERY)
    watch.look(0.0)  # must not raise: the scheduler's own store calls report the outage
    watch.look(EVERY)
    watch.close()
    assert errors(caplog) == []
