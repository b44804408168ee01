"""OccurrenceLedger on the memory store: what its claims return and when it reads again."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from celery.schedules import schedule

from celery_leaderfeed.backends.memory import MemoryBackend, memory_store
from celery_leaderfeed.celery.ledger import Claim, OccurrenceLedger
from celery_leaderfeed.celery.occurrences import EntryState, PlannedRun, task_id_for

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


class Store(MemoryBackend):
    """The memory backend, counting reads of the schedule state."""

    reads = 0

    def read_entries(self) -> dict[str, str]:
        self.reads += 1
        return super().read_entries()


def leader(store: MemoryBackend) -> tuple[int, str]:
    """Claim the store's record by hand: (term, token)."""
    token = uuid.uuid4().hex
    result = store.claim(store.read().version, "m", token, min_term=0, min_version=0)
    assert result.ok and result.observation.record is not None
    return result.observation.record.term, token


@pytest.fixture
def store() -> Store:
    url = f"memory://ledger-{uuid.uuid4().hex[:10]}"
    memory_store(url).clock = T0.timestamp  # the store's clock agrees with the ledger's
    return Store(url, name="cluster")


@pytest.fixture
def every_second() -> schedule:
    return schedule(timedelta(seconds=1), app=Celery("ledger-tests", set_as_current=False))


def test_a_missing_state_is_anchored_then_claimed_and_kept(
    store: Store, every_second: schedule
) -> None:
    term, token = leader(store)
    ledger = OccurrenceLedger(store, lambda: T0)
    ledger.read(term, token)
    state, rebuilt = ledger.state("tick", every_second, T0, term=term)
    assert (state, rebuilt) == (EntryState.anchored(T0, term), True)
    assert ledger.claim(term, token, "tick", state) is Claim.CLAIMED
    assert ledger.state("tick", every_second, T0, term=term) == (state, False)
    ledger.read(term, token)
    assert store.reads == 1  # read once per term


def test_a_refused_claim_is_counted_and_the_states_are_read_again(
    store: Store, every_second: schedule
) -> None:
    old_term, old_token = leader(store)
    ledger = OccurrenceLedger(store, lambda: T0)
    ledger.read(old_term, old_token)
    leader(store)  # a successor: the old term is fenced out
    state, _ = ledger.state("tick", every_second, T0, term=old_term)
    assert ledger.claim(old_term, old_token, "tick", state) is Claim.REFUSED
    assert ledger.claim(old_term, old_token, "tick", state) is Claim.REFUSED
    assert ledger.refusals == 2
    ledger.read(old_term, old_token)
    assert store.reads == 2
    assert "the store shows term" in str(ledger.why_refused(old_term, old_token))
    ledger.forget()
    assert ledger.refusals == 0


def test_a_claim_holds_its_run_pending_until_a_second_write_confirms_it(
    store: Store, every_second: schedule
) -> None:
    term, token = leader(store)
    ledger = OccurrenceLedger(store, lambda: T0)
    ledger.read(term, token)
    anchored, _ = ledger.state("tick", every_second, T0, term=term)
    assert ledger.claim(term, token, "tick", anchored) is Claim.CLAIMED
    due = T0 + timedelta(seconds=1)
    run = PlannedRun(advance_to=due, send=due)
    claimed = anchored.after(run, term=term, sent_at=1.0, election=ledger.election, entry="tick")
    assert claimed.pending is not None
    assert claimed.pending.task_id == task_id_for(store.name, "tick@2024-05-01T12:00:01.000000Z")
    assert ledger.claim(term, token, "tick", claimed) is Claim.CLAIMED
    assert EntryState.decode(store.read_entries()["tick"]).pending == claimed.pending
    assert ledger.claim(term, token, "tick", claimed.confirmed()) is Claim.CLAIMED
    assert EntryState.decode(store.read_entries()["tick"]).pending is None


def test_a_corrupt_pending_record_alone_is_rebuilt_from_last_due(
    store: Store, every_second: schedule, caplog: pytest.LogCaptureFixture
) -> None:
    term, token = leader(store)
    state = EntryState(last_due=T0, term=term, runs=4)
    raw = state.encode().replace('"pending":null', '"pending":{"occurrence":7}')
    assert store.write_entry(term, token, "tick", None, raw)
    ledger = OccurrenceLedger(store, lambda: T0)
    ledger.read(term, token)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        rebuilt, must_claim = ledger.state("tick", every_second, T0, term=term)
    assert not must_claim and rebuilt.runs == 4 and rebuilt.last_due == T0
    assert rebuilt.pending is not None
    assert rebuilt.pending.occurrence == "tick@2024-05-01T12:00:00.000000Z"
    assert rebuilt.pending.task_id == task_id_for(store.name, rebuilt.pending.occurrence)
    assert "corrupt pending publish" in caplog.text


def test_corrupt_and_future_states_are_rebuilt_with_a_warning(
    store: Store, every_second: schedule, caplog: pytest.LogCaptureFixture
) -> None:
    term, token = leader(store)
    ahead = EntryState(last_due=T0 + timedelta(hours=1), term=term, runs=7)
    assert store.write_entry(term, token, "ahead", None, ahead.encode())
    assert store.write_entry(term, token, "garbled", None, "{garbage")
    ledger = OccurrenceLedger(store, lambda: T0)
    ledger.read(term, token)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed.beat"):
        garbled = ledger.state("garbled", every_second, T0, term=term)
        rebased = ledger.state("ahead", every_second, T0, term=term)
    assert garbled == (EntryState.anchored(T0, term), True)
    assert rebased == (ahead.rebased(T0, term), True)
    assert "stored state of 'garbled' is corrupt" in caplog.text
    assert "stored state of 'ahead' says its last run was due at" in caplog.text
