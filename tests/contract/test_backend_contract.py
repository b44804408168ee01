"""The backend contract: every backend passes these tests unchanged.

Primitives are checked against the semantics in ``celery_leaderfeed.backends.transitions``;
the last group runs the engine itself on the backend.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from celery_leaderfeed import BackendUnavailable, LeaderFeed
from celery_leaderfeed.backends.base import Backend, RecordChanged
from celery_leaderfeed.record import CORRUPT_VERSION, MISSING_VERSION, Observation
from harness.helpers import wait_until
from tests.kits import BackendKit

FEED_DEADLINE = 5.0


def claim_fresh(backend: Backend, holder: str = "a", token: str = "tok-a") -> Observation:
    result = backend.claim(MISSING_VERSION, holder, token, min_term=1, min_version=1)
    assert result.ok, result
    return result.observation


def collect(subscription, predicate, timeout: float = FEED_DEADLINE) -> list[RecordChanged]:
    """Poll a subscription until ``predicate(events)`` holds."""
    events: list[RecordChanged] = []
    deadline = time.monotonic() + timeout
    while not predicate(events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"feed delivered only {events}"
        events += [
            e for e in subscription.poll(min(remaining, 0.2)) if isinstance(e, RecordChanged)
        ]
    return events


# -- reading and claiming ---------------------------------------------------------------------


def test_empty_store_reads_as_missing(kit: BackendKit) -> None:
    observation = kit.connected().read()
    assert observation.record is None
    assert not observation.corrupt
    assert observation.version == MISSING_VERSION


def test_claim_on_missing_record_starts_term_and_version_at_the_store_clock(
    kit: BackendKit,
) -> None:
    # They keep rising even if the store loses the record and nobody remembers the last ones.
    backend = kit.connected()
    before = time.time()
    record = claim_fresh(backend, "node-a", "token-a").record
    assert record is not None
    assert (record.holder, record.token) == ("node-a", "token-a")
    assert abs(record.term - before * 1000) < 60_000
    assert record.renewed_at is not None
    assert 0 <= record.renewed_at * 1000 - record.term < 1  # the same instant, in ms
    assert record.version == record.term
    assert record.nominee is None
    assert record.renewed_at is not None and abs(record.renewed_at - before) < 60
    assert backend.read().record == record


def test_claim_with_stale_version_fails_and_shows_current(kit: BackendKit) -> None:
    backend = kit.connected()
    first = claim_fresh(backend)
    result = backend.claim(MISSING_VERSION, "b", "tok-b", min_term=1, min_version=1)
    assert not result.ok
    assert result.observation.record == first.record
    assert backend.read().record == first.record


def test_claim_over_a_held_record_raises_the_term(kit: BackendKit) -> None:
    backend = kit.connected()
    first = claim_fresh(backend)
    result = backend.claim(first.version, "b", "tok-b", min_term=1, min_version=1)
    assert result.ok
    record = result.observation.record
    assert record is not None
    assert first.record is not None
    assert (record.holder, record.term) == ("b", first.record.term + 1)
    assert record.version == first.record.version + 1


def test_claim_honours_minimum_term_and_version(kit: BackendKit) -> None:
    backend = kit.connected()
    floor = int(time.time() * 1000) + 10**9  # above anything the store clock would give
    result = backend.claim(MISSING_VERSION, "a", "tok", min_term=floor, min_version=floor + 7)
    assert result.ok
    record = result.observation.record
    assert record is not None
    assert (record.term, record.version) == (floor, floor + 7)
    again = backend.claim(record.version, "b", "tok-b", min_term=floor - 5, min_version=1)
    assert again.observation.record is not None
    assert (again.observation.record.term, again.observation.record.version) == (
        floor + 1,
        floor + 8,
    )


def test_concurrent_claims_have_exactly_one_winner(kit: BackendKit) -> None:
    backends = [kit.connected() for _ in range(8)]
    barrier = threading.Barrier(len(backends))
    results = []

    def contend(index: int) -> None:
        barrier.wait()
        results.append(
            backends[index].claim(
                MISSING_VERSION, f"m{index}", f"t{index}", min_term=1, min_version=1
            )
        )

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [r for r in results if r.ok]
    assert len(results) == len(backends)
    assert len(winners) == 1
    final = backends[0].read().record
    assert final is not None and final == winners[0].observation.record


# -- renewing, resigning, nominating -----------------------------------------------------------


def test_renew_needs_matching_term_and_token(kit: BackendKit) -> None:
    backend = kit.connected()
    record = claim_fresh(backend, "a", "tok-a").record
    assert record is not None
    assert not backend.renew(record.term, "other-token").ok
    assert not backend.renew(record.term + 1, "tok-a").ok
    result = backend.renew(record.term, "tok-a")
    assert result.ok
    renewed = result.observation.record
    assert renewed is not None
    assert (renewed.holder, renewed.term, renewed.version) == ("a", record.term, record.version + 1)
    assert renewed.renewed_at is not None and renewed.renewed_at >= record.renewed_at  # type: ignore[operator]


def test_renew_fails_on_missing_record(kit: BackendKit) -> None:
    backend = kit.connected()
    result = backend.renew(1, "tok")
    assert not result.ok
    assert result.observation.record is None


def test_resign_leaves_a_vacant_record_with_the_same_term(kit: BackendKit) -> None:
    backend = kit.connected()
    record = claim_fresh(backend, "a", "tok-a").record
    assert record is not None
    assert not backend.resign(record.term, "wrong").ok
    result = backend.resign(record.term, "tok-a", "b")
    assert result.ok
    vacant = result.observation.record
    assert vacant is not None and vacant.vacant
    assert (vacant.token, vacant.term, vacant.nominee) == (None, record.term, "b")
    assert vacant.version == record.version + 1
    assert not backend.renew(record.term, "tok-a").ok
    claimed = backend.claim(vacant.version, "b", "tok-b", min_term=1, min_version=1)
    assert claimed.ok and claimed.observation.record is not None
    assert claimed.observation.record.term == record.term + 1
    assert claimed.observation.record.nominee is None


def test_nominate_needs_a_valid_record_at_the_expected_version(kit: BackendKit) -> None:
    backend = kit.connected()
    assert not backend.nominate(MISSING_VERSION, "b").ok
    record = claim_fresh(backend, "a", "tok-a").record
    assert record is not None
    assert not backend.nominate(record.version + 5, "b").ok
    result = backend.nominate(record.version, "b")
    assert result.ok
    nominated = result.observation.record
    assert nominated is not None
    assert (nominated.holder, nominated.token, nominated.term) == ("a", "tok-a", record.term)
    assert (nominated.nominee, nominated.version) == ("b", record.version + 1)
    # The holder still renews (and sees the nomination); naming itself clears it.
    renewed = backend.renew(record.term, "tok-a").observation.record
    assert renewed is not None and renewed.nominee == "b"
    self_nominated = backend.nominate(renewed.version, "a").observation.record
    assert self_nominated is not None and self_nominated.nominee == "a"
    cleared = backend.renew(record.term, "tok-a").observation.record
    assert cleared is not None and cleared.nominee is None


# -- foreign data ------------------------------------------------------------------------------


def test_foreign_data_reads_as_corrupt_and_can_be_claimed_over(kit: BackendKit) -> None:
    backend = kit.connected()
    kit.corrupt(kit.name)
    observation = backend.read()
    assert observation.corrupt and observation.record is None
    assert observation.version == CORRUPT_VERSION
    assert not backend.claim(MISSING_VERSION, "a", "tok", min_term=1, min_version=1).ok
    assert not backend.renew(1, "tok").ok
    result = backend.claim(CORRUPT_VERSION, "a", "tok", min_term=3, min_version=7)
    assert result.ok
    record = backend.read().record
    assert record is not None and record.holder == "a"
    assert abs(record.term - time.time() * 1000) < 60_000
    assert record.version == record.term


# -- the feed ----------------------------------------------------------------------------------


def test_feed_delivers_every_kind_of_write_in_order(kit: BackendKit) -> None:
    backend = kit.connected()
    subscription = backend.subscribe()
    try:
        record = claim_fresh(backend, "a", "tok-a").record
        assert record is not None
        first = record.version
        assert backend.renew(record.term, "tok-a").ok
        assert backend.nominate(first + 1, "b").ok
        assert backend.resign(record.term, "tok-a", "b").ok
        events = collect(
            subscription,
            lambda seen: any(
                e.observation.record is not None and e.observation.record.version == first + 3
                for e in seen
            ),
        )
        versions = [e.observation.record.version for e in events if e.observation.record]
        assert versions == [first, first + 1, first + 2, first + 3]
        last = events[-1].observation.record
        assert last is not None and last.vacant and last.nominee == "b"
    finally:
        subscription.close()


def test_feed_delivers_a_write_from_another_connection_quickly(kit: BackendKit) -> None:
    watcher, writer = kit.connected(), kit.connected()
    subscription = watcher.subscribe()
    try:
        started = time.monotonic()
        claim_fresh(writer, "w", "tok-w")
        events = collect(
            subscription, lambda seen: any(e.observation.leader_id == "w" for e in seen)
        )
        assert time.monotonic() - started < FEED_DEADLINE
        assert events[-1].observation.record is not None
    finally:
        subscription.close()


def test_feeds_of_different_elections_are_separate(kit: BackendKit) -> None:
    mine = kit.connected()
    other = kit.connected(f"other-{uuid.uuid4().hex[:8]}")
    subscription = mine.subscribe()
    try:
        claim_fresh(other, "x", "tok-x")
        claim_fresh(mine, "y", "tok-y")
        events = collect(
            subscription, lambda seen: any(e.observation.leader_id == "y" for e in seen)
        )
        assert all(e.observation.leader_id != "x" for e in events)
    finally:
        subscription.close()


def test_a_closed_subscription_refuses_to_poll(kit: BackendKit) -> None:
    backend = kit.connected()
    subscription = backend.subscribe()
    subscription.close()
    subscription.close()
    with pytest.raises(BackendUnavailable):
        subscription.poll(0.01)


# -- schedule state ----------------------------------------------------------------------------


def test_schedule_entries_are_fenced_by_term_and_token(kit: BackendKit) -> None:
    backend = kit.connected()
    assert backend.read_entries() == {}
    assert not backend.write_entry(1, "tok-a", "job", None, "v1")  # no leader yet
    record = claim_fresh(backend, "a", "tok-a").record
    assert record is not None
    assert backend.write_entry(record.term, "tok-a", "job", None, "v1")
    assert not backend.write_entry(record.term, "tok-a", "job", None, "v1-again")  # exists now
    assert not backend.write_entry(record.term, "tok-a", "job", "stale", "v2")
    assert not backend.write_entry(record.term, "intruder", "job", "v1", "v2")
    assert not backend.write_entry(record.term + 1, "tok-a", "job", "v1", "v2")
    assert backend.write_entry(record.term, "tok-a", "job", "v1", "v2")
    assert backend.write_entry(record.term, "tok-a", "other", None, '{"x": 1}')
    assert backend.read_entries() == {"job": "v2", "other": '{"x": 1}'}
    # A new term fences the old holder out.
    backend.claim(backend.read().version, "b", "tok-b", min_term=1, min_version=1)
    assert not backend.write_entry(record.term, "tok-a", "job", "v2", "v3")
    assert backend.read_entries()["job"] == "v2"


# -- errors and secrets ------------------------------------------------------------------------


def test_unreachable_store_raises_backend_unavailable_without_password(kit: BackendKit) -> None:
    if not kit.unreachable_url:
        assert kit.id == "memory"  # only the in-process store has no address to miss
        return
    url = kit.unreachable_url.replace("://", "://user:hunter2-secret@", 1)
    kit.url, saved = url, kit.url
    try:
        backend = kit.backend(timeout=0.5)
    finally:
        kit.url = saved
    assert "hunter2-secret" not in repr(backend)
    started = time.monotonic()

    def connect_and_read() -> None:
        backend.connect()
        backend.read()

    with pytest.raises(BackendUnavailable) as raised:
        connect_and_read()
    assert time.monotonic() - started < 10
    assert "hunter2-secret" not in str(raised.value)


def test_create_is_idempotent_when_raced(kit: BackendKit) -> None:
    backends = [kit.backend() for _ in range(4)]
    barrier = threading.Barrier(len(backends))
    errors: list[BaseException] = []

    def start(backend: Backend) -> None:
        try:
            backend.connect()
            barrier.wait()
            backend.create()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert backends[0].read().record is None


# -- the engine on this backend ----------------------------------------------------------------


def make_feeds(kit: BackendKit, count: int) -> list[LeaderFeed]:
    return [
        LeaderFeed(
            kit.backend(),
            member_id=f"member-{index}",
            heartbeat_interval=0.1,
            election_timeout_min=0.4,
            election_timeout_max=0.6,
        )
        for index in range(count)
    ]


def leaders(feeds: list[LeaderFeed]) -> list[LeaderFeed]:
    return [feed for feed in feeds if feed.is_leader]


def test_engine_elects_one_leader_and_hands_over_on_stop(
    kit: BackendKit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="celery_leaderfeed")
    feeds = make_feeds(kit, 3)
    try:
        for feed in feeds:
            feed.start()
        first = wait_until(lambda: leaders(feeds), 5, message="a leader")[0]
        wait_until(lambda: all(f.leader_id == first.id for f in feeds), 5, message="all agree")
        assert len(leaders(feeds)) == 1
        term = first.term
        assert term is not None
        # Graceful stop resigns: the next leader is elected through the feed, long before
        # any election timeout (0.4 s) could have fired.
        stopped_at = time.monotonic()
        first.stop()
        assert not first.is_leader
        rest = [f for f in feeds if f is not first]
        second = wait_until(lambda: leaders(rest), 5, message="a new leader")[0]
        handover = time.monotonic() - stopped_at
        assert handover < 0.4, f"handover took {handover:.3f} s: it waited for a timeout"
        assert second.term is not None and second.term > term
        assert len(leaders(rest)) == 1
    finally:
        for feed in feeds:
            feed.stop()
    assert "s3cret" not in caplog.text


def test_engine_elect_transfers_leadership_to_the_named_member(kit: BackendKit) -> None:
    feeds = make_feeds(kit, 3)
    try:
        for feed in feeds:
            feed.start()
        leader = wait_until(lambda: leaders(feeds), 5, message="a leader")[0]
        target = next(f for f in feeds if f is not leader)
        bystander = next(f for f in feeds if f not in (leader, target))
        # Asked from a third member: the leader hands over, the nominee takes over.
        bystander.elect(target.id, timeout=5)  # returns once the bystander sees the record
        wait_until(lambda: target.is_leader, 5, message="the nominee leads")
        assert not leader.is_leader
        wait_until(lambda: all(f.leader_id == target.id for f in feeds), 5, message="all agree")
        # Asked by a member for itself.
        bystander.elect(timeout=5)
        assert bystander.is_leader and not target.is_leader
        assert leaders(feeds) == [bystander]
    finally:
        for feed in feeds:
            feed.stop()


# -- once-only marks ---------------------------------------------------------------------------

#: Keys and values as the consumer side makes them (entry names are the user's) and worse.
ODD_TEXT = (
    "",
    "entry/with spaces@2026-12-05T11:00:00+00:00#1",
    "{braces} [x] * ? % $field .dot \\ ' \" ; -- DROP TABLE",
    "ünïcødé ✓ 😀 \t\n\r",
    "x" * 1000,
)


def fresh_key() -> str:
    return f"occ-{uuid.uuid4().hex}"


def test_mark_once_first_mark_wins_and_later_marks_see_its_value(kit: BackendKit) -> None:
    backend, other = kit.connected(), kit.connected()
    key = fresh_key()
    assert backend.mark_once(key, "first", 60) is None
    assert backend.mark_once(key, "second", 60) == "first"
    assert other.mark_once(key, "third", 60) == "first"  # another connection, same election
    assert other.mark_once(fresh_key(), "third", 60) is None  # marks are per key
    assert backend.mark_once(key, "fourth", 0.001) == "first"  # a short ttl changes nothing


def test_concurrent_marks_have_exactly_one_winner_per_key(kit: BackendKit) -> None:
    threads, keys = 8, [fresh_key() for _ in range(50)]
    backends = [kit.connected() for _ in range(threads)]
    barrier = threading.Barrier(threads)
    replies: dict[int, list[str | None]] = {}
    errors: list[BaseException] = []

    def mark_all(index: int) -> None:
        try:
            barrier.wait(10)
            # Every thread walks the keys in its own order, so they meet on every key.
            order = keys[index:] + keys[:index]
            got = {k: backends[index].mark_once(k, f"v{index}", 60) for k in order}
            replies[index] = [got[k] for k in keys]
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    workers = [threading.Thread(target=mark_all, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert len(replies) == threads
    for position, key in enumerate(keys):
        seen = {index: replies[index][position] for index in range(threads)}
        winners = [index for index, reply in seen.items() if reply is None]
        assert len(winners) == 1, f"{key}: {seen}"
        assert all(reply == f"v{winners[0]}" for reply in seen.values() if reply is not None)


def test_marks_expire_by_the_store_clock(kit: BackendKit) -> None:
    backend = kit.connected()
    key, lasting = fresh_key(), fresh_key()
    marked_at = time.monotonic()
    assert backend.mark_once(key, "short", 0.5) is None
    assert backend.mark_once(lasting, "long", 60) is None
    held = backend.mark_once(key, "early", 60)
    if time.monotonic() - marked_at < 0.4:  # asked well within the ttl: still held
        assert held == "short"
    # Expired: the next mark sets it again, and its value is what later marks see.
    wait_until(lambda: backend.mark_once(key, "again", 60) is None, 10, message="expiry")
    assert time.monotonic() - marked_at >= 0.3  # not before its time (allowing clock steps)
    assert backend.mark_once(key, "later", 60) == "again"
    assert backend.mark_once(lasting, "other", 60) == "long"


def test_marks_of_different_elections_are_separate(kit: BackendKit) -> None:
    mine = kit.connected()
    other = kit.connected(f"other-{uuid.uuid4().hex[:8]}")
    key = fresh_key()
    assert mine.mark_once(key, "mine", 60) is None
    assert other.mark_once(key, "theirs", 60) is None
    assert mine.mark_once(key, "x", 60) == "mine"
    assert other.mark_once(key, "x", 60) == "theirs"


def test_marks_keep_unusual_keys_and_values_exactly(kit: BackendKit) -> None:
    backend = kit.connected()
    salt = uuid.uuid4().hex
    for index, text in enumerate(ODD_TEXT):
        key = text + salt  # distinct keys, each with the odd text in it
        assert backend.mark_once(key, text, 60) is None, index
        assert backend.mark_once(key, "other", 60) == text, index
    # Keys that differ only in what a store might normalise, escape or truncate stay apart.
    base = "x" * 1000 + salt
    assert backend.mark_once(base + "a", "a", 60) is None
    assert backend.mark_once(base + "b", "b", 60) is None
    assert backend.mark_once("A" + salt, "upper", 60) is None
    assert backend.mark_once("a" + salt, "lower", 60) is None
    assert backend.mark_once("a." + salt, "dot", 60) is None
    assert backend.mark_once("a%2E" + salt, "escaped dot", 60) is None


def test_mark_once_rejects_a_ttl_that_is_not_positive(kit: BackendKit) -> None:
    backend = kit.connected()
    for ttl in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="ttl"):
            backend.mark_once(fresh_key(), "v", ttl)


def test_mark_once_refuses_nul_in_keys_and_values_on_every_backend(kit: BackendKit) -> None:
    """PostgreSQL text cannot hold NUL; the API refuses it everywhere, so code moves freely."""
    backend = kit.connected()
    for key, value in (("a\x00b", "v"), (fresh_key(), "v\x00")):
        with pytest.raises(ValueError, match="NUL"):
            backend.mark_once(key, value, 60)


def test_mark_once_on_an_unreachable_store_raises_backend_unavailable(kit: BackendKit) -> None:
    if not kit.unreachable_url:
        assert kit.id == "memory"  # only the in-process store has no address to miss
        return
    url = kit.unreachable_url.replace("://", "://user:hunter2-secret@", 1)
    kit.url, saved = url, kit.url
    try:
        backend = kit.backend(timeout=0.5)
    finally:
        kit.url = saved
    started = time.monotonic()
    with pytest.raises(BackendUnavailable) as raised:
        backend.connect()
    with pytest.raises(BackendUnavailable) as raised:
        backend.mark_once(fresh_key(), "v", 60)
    assert time.monotonic() - started < 10
    assert "hunter2-secret" not in str(raised.value)
