"""What the in-process ``LeaderScheduler`` tests share: clocks the test moves, leadership taken
by hand on the memory store, a recording ``send_task``, and the fixtures built from them.

Registered as a plugin in ``tests/conftest.py``, so its fixtures reach every test module.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery

from celery_leaderfeed.backends.memory import MemoryBackend, memory_store
from celery_leaderfeed.celery.occurrences import EntryState, occurrence_id
from celery_leaderfeed.celery.scheduler import LeaderScheduler
from celery_leaderfeed.engine.election import Lease, Role

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
HEARTBEAT = 0.2


class Clocks:
    """The scheduler's wall clock (UTC) and monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


class HandLeadership:
    """Leadership taken and lost by hand on the memory store's record."""

    def __init__(self, url: str, election: str, member: str) -> None:
        self.backend = MemoryBackend(url, name=election)
        self.election = election
        self.member = member
        self.token = uuid.uuid4().hex
        self.term: int | None = None
        self.started = 0
        self.closed = 0
        #: The lease's valid_from and fenced_from (an early term: fenced before valid).
        self.valid_from = -math.inf
        self.fenced_from: float | None = None

    def take(self) -> int:
        observed = self.backend.read()
        result = self.backend.claim(
            observed.version, self.member, self.token, min_term=0, min_version=0
        )
        assert result.ok and result.observation.record is not None
        self.term = result.observation.record.term
        return self.term

    def drop(self) -> None:
        self.term = None

    def start(self) -> None:
        self.started += 1

    def lease(self) -> Lease | None:
        if self.term is None:
            return None
        return Lease(
            Role.LEADER,
            self.term,
            self.token,
            deadline=math.inf,
            valid_from=self.valid_from,
            fenced_from=self.fenced_from,
            member_id=self.member,
        )

    def close(self) -> None:
        self.closed += 1


class Sent:
    """Every ``send_task`` call of the app: (task name, headers), and each call's task id."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.task_ids: list[str | None] = []
        self.failing = False

    def __call__(self, name: str, *args: Any, **options: Any) -> None:
        if self.failing:
            raise ConnectionError("broker unreachable (injected)")
        self.calls.append((name, dict(options.get("headers") or {})))
        self.task_ids.append(options.get("task_id"))

    @property
    def occurrences(self) -> list[str]:
        return [headers["leaderfeed_occurrence"] for _, headers in self.calls]


@pytest.fixture
def store_url() -> str:
    return f"memory://beat-{uuid.uuid4().hex[:10]}"


def make_app(store_url: str, **conf: Any) -> Celery:
    app = Celery("beat-tests", set_as_current=False)
    settings: dict[str, Any] = {
        "broker_url": "memory://",
        "task_default_queue": f"q-{uuid.uuid4().hex[:8]}",
        "leaderfeed_backend": store_url,
        "leaderfeed_name": "cluster",
        "leaderfeed_heartbeat_interval": HEARTBEAT,
        "leaderfeed_election_timeout_min": 0.6,
        "leaderfeed_election_timeout_max": 0.9,
        "beat_schedule": {"tick": {"task": "tests.tick", "schedule": 1.0}},
    }
    app.conf.update({**settings, **conf})

    @app.task(name="tests.tick", shared=False)
    def tick() -> None: ...

    return app


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def app(store_url: str, sent: Sent, monkeypatch: pytest.MonkeyPatch) -> Celery:
    app = make_app(store_url)
    monkeypatch.setattr(app, "send_task", sent)
    return app


@pytest.fixture
def schedulers() -> Iterator[list[LeaderScheduler]]:
    made: list[LeaderScheduler] = []
    yield made
    for scheduler in made:
        scheduler.close()


def scheduler_for(
    app: Celery,
    leadership: HandLeadership,
    clocks: Clocks,
    made: list[LeaderScheduler],
) -> LeaderScheduler:
    scheduler = LeaderScheduler(
        app, leadership=leadership, clock=clocks.now, monotonic=clocks.monotonic
    )
    made.append(scheduler)
    return scheduler


def stored(store_url: str, election: str = "cluster") -> dict[str, EntryState]:
    raw = memory_store(store_url).entries(election)
    return {name: EntryState.decode(value) for name, value in raw.items()}


def tick_id(seconds: float) -> str:
    return occurrence_id("tick", T0 + timedelta(seconds=seconds))


# -- laziness, following, closing ---------------------------------------------------------------
