"""A schedule state from the future, met by a real ``celery beat``.

A leader whose clock ran an hour ahead left the state of ``pulse`` (a 0.5 s interval) due an hour
from now. The beat that leads next checks the state against the schedule - and, so that a
clock of its own running behind is not mistaken for the writer's fault, against the store's
clock (Redis ``TIME``) - rebuilds it with one WARNING naming the entry, and sends on time. It
used to stay silent for that hour.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis

from celery_leaderfeed.celery.occurrences import EntryState, parse_occurrence_id
from harness import celery_log
from harness.helpers import wait_until
from tests.workers import CeleryProcess

pytestmark = pytest.mark.celery_workers

PERIOD = 0.5
TIMING = {
    "leaderfeed_heartbeat_interval": 0.2,
    "leaderfeed_election_timeout_min": 0.6,
    "leaderfeed_election_timeout_max": 0.9,
}


@pytest.fixture
def name(redis_url: str) -> Iterator[str]:
    name = f"ss-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"*{name}*"):
        client.delete(key)
    client.close()


def test_a_future_dated_state_is_rebuilt_with_a_warning_and_sends_on_time(
    redis_url: str, name: str, tmp_path: Path
) -> None:
    schedule_key = f"leaderfeed:{{{name}.beat}}:schedule"
    client = redis.Redis.from_url(redis_url)
    future = EntryState(last_due=datetime.now(timezone.utc) + timedelta(hours=1), term=1, runs=5)
    client.hset(schedule_key, "pulse", future.encode())
    conf = {
        "broker_url": redis_url,
        "leaderfeed_name": name,
        "task_default_queue": name,
        "beat_schedule": {
            "pulse": {"task": "beat_app.pulse", "schedule": PERIOD, "options": {"queue": name}}
        },
        **TIMING,
    }
    beat = CeleryProcess(
        "tests.celery_apps.beat_app",
        ["beat", "-S", "leaderfeed", "-l", "INFO"],
        tmp_path / "beat.log",
        env={"LEADERFEED_TEST_CONF": json.dumps(conf)},
        ready_marker="leaderfeed scheduler in election",
    )
    try:
        beat.wait_ready(30)
        wait_until(lambda: "beat: sending pulse@" in beat.log(), 15, interval=0.05)
        log = beat.log()
    finally:
        beat.stop()
        client.close()

    warnings = [line for line in log.splitlines() if "WARNING" in line and "'pulse'" in line]
    assert len(warnings) == 1, warnings
    assert "stored state of 'pulse' says its last run was due at" in warnings[0]
    assert "ahead of the store's clock" in warnings[0] and "Rebuilding it from now" in warnings[0]
    ahead = float(re.search(r"([\d.]+) s ahead", warnings[0])[1])  # type: ignore[index]
    assert 3590 < ahead <= 3600

    warned_at = _logged_at(warnings[0])
    sent = re.search(r"beat: sending (pulse@\S+)", log)
    assert sent is not None
    _, due = parse_occurrence_id(sent[1])
    # On time: the first run is one period after the rebuild (clock of this machine, both).
    assert timedelta(0) < due.replace(tzinfo=None) - _utc(warned_at) < timedelta(seconds=2)
    rebuilt = EntryState.decode(_stored(redis_url, schedule_key))
    assert rebuilt.runs >= 6 and rebuilt.last_due < future.last_due - timedelta(minutes=59)


def _logged_at(line: str) -> datetime:
    stamp = re.match(r"^\[([\d-]+ [\d:,]+):", line)
    assert stamp is not None
    return celery_log.logged_at(stamp[1])


def _utc(local: datetime) -> datetime:
    """A naive local-time log stamp as naive UTC, to compare with due times."""
    return local.astimezone(timezone.utc).replace(tzinfo=None)


def _stored(redis_url: str, key: str) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hget(key, "pulse")
        assert isinstance(raw, bytes)
        return raw.decode()
    finally:
        client.close()
