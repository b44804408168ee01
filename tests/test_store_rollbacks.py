"""A store that went back to an earlier state, as each backend with a history marker sees it.

Redis stamps every record with its run id and replication id; the memory store with its
history counter. A record stamped with another history is *suspect*: it reads as such, only a
claim may replace it (terms then start from the store's clock), and the claim's reply says that
it replaced a suspect record, so the claimer waits out any lease the store forgot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from celery_leaderfeed.backends.base import Backend
from celery_leaderfeed.backends.memory import MemoryBackend, MemoryStore
from celery_leaderfeed.backends.redis import RedisBackend
from celery_leaderfeed.backends.transitions import CLOCK_LAG_MS
from celery_leaderfeed.record import MISSING_VERSION, LeaderRecord


@dataclass
class Rollback:
    """One backend, and a way to make its record look as if written under another history."""

    backend: Backend
    roll_back: Callable[[], None]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Rollback]:
    if request.param == "memory":
        memory = MemoryStore()
        backend: Backend = MemoryBackend("memory://rb", name="rb", options={"store": memory})
        backend.connect()
        state = memory.snapshot

        def restore() -> None:
            memory.restore(state(), new_history=True)  # same state, new history

        yield Rollback(backend, restore)
        return
    backend = RedisBackend(redis_url, name=f"rb-{time.monotonic_ns()}")
    backend.connect()
    client = redis.Redis.from_url(redis_url)

    def restamp() -> None:  # what a restart or a promotion does to the record's stamp
        raw = json.loads(client.get(backend.record_key))  # type: ignore[arg-type]
        raw["history"] = "another-run-id/another-replid"
        client.set(backend.record_key, json.dumps(raw))

    yield Rollback(backend, restamp)
    client.delete(backend.record_key, backend.schedule_key)
    client.close()
    backend.close()


def held(store: Rollback) -> LeaderRecord:
    result = store.backend.claim(MISSING_VERSION, "a", "tok-a", min_term=1, min_version=1)
    assert result.ok and result.observation.record is not None
    assert not result.over_suspect and not result.observation.suspect
    return result.observation.record


def test_a_record_of_another_history_reads_as_suspect(store: Rollback) -> None:
    record = held(store)
    assert not store.backend.read().suspect
    store.roll_back()
    observation = store.backend.read()
    assert observation.suspect and observation.record == record


def test_only_a_claim_may_replace_a_suspect_record(store: Rollback) -> None:
    record = held(store)
    assert store.backend.write_entry(record.term, "tok-a", "e", None, "1")
    store.roll_back()
    backend = store.backend
    for refused in (
        backend.renew(record.term, "tok-a"),
        backend.resign(record.term, "tok-a"),
        backend.nominate(record.version, "b"),
    ):
        assert not refused.ok and refused.observation.suspect
    assert not backend.write_entry(record.term, "tok-a", "e", "1", "2")
    assert backend.read().record == record


def test_a_claim_over_a_suspect_record_starts_from_the_clock_and_says_so(store: Rollback) -> None:
    record = held(store)
    time.sleep(0.01)  # the store's clock moves past the first term
    store.roll_back()
    result = store.backend.claim(record.version, "a", "tok-a2", min_term=1, min_version=1)
    assert result.ok and result.over_suspect
    claimed = result.observation.record
    assert claimed is not None and not result.observation.suspect
    assert result.observation.store_time is not None
    assert claimed.term == int(result.observation.store_time * 1000) > record.term + 1
    assert store.backend.renew(claimed.term, "tok-a2").ok  # ours again, in this history


def test_a_claim_over_a_trusted_record_stays_within_the_lag_of_the_clock(store: Rollback) -> None:
    record = held(store)
    result = store.backend.claim(record.version, "b", "tok-b", min_term=1, min_version=1)
    claimed = result.observation.record
    assert result.ok and not result.over_suspect and claimed is not None
    assert claimed.term == record.term + 1  # quick claims in a row count up by one
    assert result.observation.store_time is not None
    assert claimed.term >= int(result.observation.store_time * 1000) - CLOCK_LAG_MS


def test_a_claim_over_an_old_record_lifts_term_and_version_to_the_lagging_clock() -> None:
    # E.g. a store whose rollback nobody could see, claimed after a delayed restart: the terms
    # it forgot were issued at most CLOCK_LAG_MS below an earlier clock.
    memory = MemoryStore(clock=lambda: 1_700_000_000.0)
    backend = MemoryBackend("memory://old", name="old", options={"store": memory})
    memory.put_raw("old", LeaderRecord("a", "tok-a", term=5, version=9).to_json())
    result = backend.claim(9, "b", "tok-b", min_term=1, min_version=1)
    claimed = result.observation.record
    assert result.ok and claimed is not None
    assert (claimed.term, claimed.version) == (1_700_000_000_000 - CLOCK_LAG_MS,) * 2


def test_schedule_state_rolls_back_with_the_record_and_only_the_lost_claims_repeat() -> None:
    # The bound of the schedule state after a rollback: occurrences claimed in the lost stretch
    # may be claimed once more, by a later term; no write of a term the store forgot, nor of
    # the term it went back to, is accepted any more.
    now = [1_700_000_000.0]
    memory = MemoryStore(clock=lambda: now[0])
    backend = MemoryBackend("memory://beat", name="beat", options={"store": memory})
    a = backend.claim(MISSING_VERSION, "a", "tok-a", min_term=1, min_version=1).observation.record
    assert a is not None
    assert backend.write_entry(a.term, "tok-a", "every-minute", None, "due 10:00")
    before = memory.snapshot()
    now[0] += 5
    b = backend.claim(a.version, "b", "tok-b", min_term=1, min_version=1).observation.record
    assert b is not None
    assert backend.write_entry(b.term, "tok-b", "every-minute", "due 10:00", "due 10:01")
    now[0] += 5
    memory.restore(before, new_history=True)  # the 10:01 claim is lost with term b

    assert not backend.write_entry(b.term, "tok-b", "every-minute", "due 10:00", "due 10:02")
    assert not backend.write_entry(a.term, "tok-a", "every-minute", "due 10:00", "due 10:01")
    claim = backend.claim(a.version, "c", "tok-c", min_term=1, min_version=1)
    c = claim.observation.record
    assert claim.over_suspect and c is not None and c.term > b.term
    assert backend.read_entries() == {"every-minute": "due 10:00"}
    # Term c (acting one election timeout later) claims 10:01 again: the one repeat.
    assert backend.write_entry(c.term, "tok-c", "every-minute", "due 10:00", "due 10:01")
