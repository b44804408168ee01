"""What only the MongoDB backend does: choosing the notification mode, the capped collection,
no replay of history, ``change`` events, dead cursors, option checks, schedule key escaping.

The contract suite covers everything the backends share; these run against the same servers
(``tests/fixtures/mongodb_server.py``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pymongo
import pytest
from bson import Decimal128, Int64
from pymongo.collection import Collection
from pymongo.database import Database

from celery_leaderfeed import BackendUnavailable, ConfigurationError, LeaderFeed
from celery_leaderfeed.backends import backend_class
from celery_leaderfeed.backends.base import (
    Backend,
    DataChanged,
    FeedEvent,
    RecordChanged,
    Subscription,
)
from celery_leaderfeed.backends.mongodb import MongoBackend, documents
from celery_leaderfeed.backends.mongodb import backend as mongodb_backend
from celery_leaderfeed.record import CORRUPT_VERSION, MISSING_VERSION, RECORD_FORMAT, decode_record
from harness.helpers import wait_until
from tests.fixtures.mongodb_server import MongoFaultServer
from tests.kits import BackendKit

DEADLINE = 5.0
Doc = dict[str, Any]


@pytest.fixture(params=["changestream", "capped"])
def mode_kit(request: pytest.FixtureRequest) -> BackendKit:
    return request.getfixturevalue(f"mongodb_{request.param}_kit")  # type: ignore[no-any-return]


@pytest.fixture
def open_database() -> Iterator[Callable[[BackendKit], Database[Doc]]]:
    """Direct access to a kit's database, to look at or meddle with what the backend stores."""
    clients: list[pymongo.MongoClient[Doc]] = []

    def open_for(kit: BackendKit) -> Database[Doc]:
        clients.append(pymongo.MongoClient(kit.url, serverSelectionTimeoutMS=5000))
        return clients[-1][kit.options["database"]]

    yield open_for
    for client in clients:
        client.close()


def watched_collection(database: Database[Doc], kit: BackendKit) -> Collection[Doc]:
    """Where other documents show up as change events: the records' collection or the capped one."""
    name = kit.options["collection"]
    return database[name if kit.options["notify"] == "changestream" else f"{name}_events"]


def poll_until(
    subscription: Subscription, predicate: Any, timeout: float = DEADLINE
) -> list[FeedEvent]:
    events: list[FeedEvent] = []
    deadline = time.monotonic() + timeout
    while not predicate(events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"feed delivered only {events}"
        events += subscription.poll(min(remaining, 0.25))
    return events


def versions(events: list[FeedEvent]) -> list[int]:
    return [
        e.observation.record.version
        for e in events
        if isinstance(e, RecordChanged) and e.observation.record is not None
    ]


def claim(backend: Backend, holder: str = "a", token: str = "tok-a") -> tuple[int, int]:
    result = backend.claim(MISSING_VERSION, holder, token, min_term=1, min_version=1)
    assert result.ok and result.observation.record is not None
    return result.observation.record.term, result.observation.record.version


# -- choosing how to notify ---------------------------------------------------------------------


def test_auto_mode_uses_change_streams_on_a_replica_set(
    mongodb_changestream_kit: BackendKit,
) -> None:
    options = {**mongodb_changestream_kit.options, "notify": "auto"}
    backend = MongoBackend(mongodb_changestream_kit.url, name="auto", options=options)
    try:
        backend.connect()
        assert backend.mode == "changestream"  # SecantusDB presents itself as a replica set
    finally:
        backend.close()


class _StandaloneView:
    """A real client whose ``hello`` answers like a standalone mongod (no setName)."""

    def __init__(self, client: pymongo.MongoClient[Doc]) -> None:
        self._client = client
        hello = {"isWritablePrimary": True, "maxWireVersion": 21, "ok": 1.0}
        self.admin = SimpleNamespace(command=lambda name: hello if name == "hello" else None)

    def get_database(self, *args: Any, **kwargs: Any) -> Database[Doc]:
        return self._client.get_database(*args, **kwargs)

    def close(self) -> None:
        self._client.close()


@pytest.fixture
def standalone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pymongo.MongoClient
    monkeypatch.setattr(
        mongodb_backend, "MongoClient", lambda *a, **k: _StandaloneView(real(*a, **k))
    )


@pytest.mark.usefixtures("standalone")
def test_auto_mode_on_a_standalone_server_follows_the_capped_collection(
    mongodb_capped_kit: BackendKit,
) -> None:
    options = {**mongodb_capped_kit.options, "notify": "auto"}
    backend = MongoBackend(mongodb_capped_kit.url, name="solo", options=options)
    try:
        backend.connect()
        backend.create()
        assert backend.mode == "capped"
        subscription = backend.subscribe()
        _, version = claim(backend)
        assert versions(poll_until(subscription, versions)) == [version]
        subscription.close()
    finally:
        backend.close()


@pytest.mark.usefixtures("standalone")
def test_change_streams_forced_on_a_standalone_server_name_the_option(
    mongodb_changestream_kit: BackendKit,
) -> None:
    backend = mongodb_changestream_kit.backend()
    with pytest.raises(ConfigurationError, match="notify"):
        backend.connect()


# -- the capped collection ----------------------------------------------------------------------


def test_capped_mode_creates_the_capped_collection_with_the_original_sizes(
    mongodb_capped_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    mongodb_capped_kit.connected()
    events = watched_collection(open_database(mongodb_capped_kit), mongodb_capped_kit)
    found = list(events.database.list_collections(filter={"name": events.name}))
    assert len(found) == 1
    options = found[0]["options"]
    assert (options.get("capped"), options.get("size"), options.get("max")) == (True, 100_000, 20)


def test_concurrent_create_makes_one_capped_collection(
    mongodb_capped_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    backends = [mongodb_capped_kit.backend() for _ in range(6)]
    barrier = threading.Barrier(len(backends))
    errors: list[BaseException] = []

    def start(backend: Backend) -> None:
        try:
            backend.connect()
            barrier.wait()
            backend.create()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    events = watched_collection(open_database(mongodb_capped_kit), mongodb_capped_kit)
    found = list(events.database.list_collections(filter={"name": events.name}))
    assert [c["options"].get("capped") for c in found] == [True]


def test_a_plain_collection_with_other_data_is_never_taken_for_the_capped_one(
    mongodb_capped_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    events = watched_collection(open_database(mongodb_capped_kit), mongodb_capped_kit)
    events.insert_one({"someone": "else's data"})
    backend = mongodb_capped_kit.backend()
    backend.connect()
    with pytest.raises(ConfigurationError, match="capped_collection"):
        backend.create()
    with pytest.raises(BackendUnavailable, match="capped_collection"):
        backend.subscribe()  # the engine retries a subscription; the data stays
    assert events.count_documents({}) == 1


def test_the_capped_collection_comes_back_after_the_server_lost_it(
    mongodb_capped_fault_server: MongoFaultServer,
) -> None:
    server = mongodb_capped_fault_server
    backend = MongoBackend(server.url, name="lost", options=server.options)
    backend.connect()
    backend.create()
    server.restart()  # empty again: no record, no capped collection
    wait_until(lambda: claim_if_reachable(backend), DEADLINE, interval=0.05, message="a claim")
    # That claim's announcement re-created the collection, but plain; subscribing repairs it.
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(server.url)
    database = client["leaderfeed_test"]
    assert capped_option(database, "leaderfeed_events") is None
    subscription = backend.subscribe()
    assert capped_option(database, "leaderfeed_events") is True
    client.close()
    try:
        term, version = backend.read().record.term, backend.read().version  # type: ignore[union-attr]
        assert backend.renew(term, "tok-a").ok
        assert versions(poll_until(subscription, versions)) == [version + 1]
    finally:
        subscription.close()
        backend.close()


def capped_option(database: Database[Doc], name: str) -> object:
    found = list(database.list_collections(filter={"name": name}))
    assert len(found) == 1, f"{name} is missing"
    return found[0]["options"].get("capped")


def claim_if_reachable(backend: Backend) -> bool:
    try:
        return backend.claim(MISSING_VERSION, "a", "tok-a", min_term=1, min_version=1).ok
    except BackendUnavailable:
        return False


def test_subscribing_replays_no_history(mode_kit: BackendKit) -> None:
    writer, watcher = mode_kit.connected(), mode_kit.connected()
    term, version = claim(writer)
    for _ in range(25):  # more than the capped collection keeps
        renewed = writer.renew(term, "tok-a")
        assert renewed.ok and renewed.observation.record is not None
        version = renewed.observation.record.version
    subscription = watcher.subscribe()
    try:
        assert writer.renew(term, "tok-a").ok
        events = poll_until(subscription, lambda seen: version + 1 in versions(seen))
        assert versions(events) == [version + 1]
    finally:
        subscription.close()


def test_a_dead_tailable_cursor_makes_poll_raise(
    mongodb_capped_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    backend = mongodb_capped_kit.connected()
    subscription = backend.subscribe()
    try:
        assert subscription.poll(0.2) == []  # opens the cursor; the history is skipped
        cursor_id = subscription._cursor.cursor_id  # type: ignore[attr-defined]
        events = watched_collection(open_database(mongodb_capped_kit), mongodb_capped_kit)
        killed = events.database.command("killCursors", events.name, cursors=[cursor_id])
        assert killed["cursorsKilled"] == [cursor_id]
        with pytest.raises(BackendUnavailable):
            poll_until(subscription, lambda seen: False, timeout=2.0)
    finally:
        subscription.close()


def test_a_dropped_collection_ends_the_change_stream(
    mongodb_changestream_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    backend = mongodb_changestream_kit.connected()
    subscription = backend.subscribe()
    try:
        claim(backend)
        poll_until(subscription, versions)
        watched_collection(open_database(mongodb_changestream_kit), mongodb_changestream_kit).drop()
        seen: list[FeedEvent] = []

        def poll_to_the_end() -> None:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                seen.extend(subscription.poll(0.25))

        with pytest.raises(BackendUnavailable):
            poll_to_the_end()
        # The record went with its collection, and the feed said so before it ended.
        assert [e for e in seen if isinstance(e, RecordChanged)][-1].observation.record is None
    finally:
        subscription.close()


@pytest.mark.parametrize("notify", ["changestream", "capped"])
def test_the_feed_comes_back_after_dropped_connections(
    notify: str, request: pytest.FixtureRequest
) -> None:
    server: MongoFaultServer = request.getfixturevalue(f"mongodb_{notify}_fault_server")
    feed = LeaderFeed(
        server.url, name="reopen", options=server.options, heartbeat_interval=0.1,
        election_timeout_min=0.4, election_timeout_max=0.6,
    )  # fmt: skip
    changes: list[object] = []
    feed.on("change", changes.append)
    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
        server.url, serverSelectionTimeoutMS=5000
    )
    watched = client["leaderfeed_test"][
        "leaderfeed" if notify == "changestream" else "leaderfeed_events"
    ]
    try:
        feed.start()
        wait_until(lambda: feed.is_leader, DEADLINE, message="leadership")
        server.drop_connections()
        # A getMore in flight fails and the engine opens a new feed; between getMores the
        # driver may instead carry the cursor over to a new connection. Either way events
        # must keep coming: keep writing until the feed delivers one.
        wait_until(
            lambda: watched.insert_one({"user": "data"}) and changes,
            DEADLINE,
            interval=0.05,
            message="a change event after the connections dropped",
        )
        assert all(isinstance(c, dict) and c for c in changes)
    finally:
        feed.stop()
        client.close()


# -- change events --------------------------------------------------------------------------------


def test_other_documents_are_change_events(
    mode_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    backend = mode_kit.connected()
    other = mode_kit.connected("another-election")
    subscription = backend.subscribe()
    watched = watched_collection(open_database(mode_kit), mode_kit)
    try:
        claim(other, "x", "tok-x")  # another election's record: no event at all
        watched.insert_one({"_id": "user-doc", "x": 1})
        events = poll_until(subscription, lambda seen: seen)
        assert len(events) == 1 and isinstance(events[0], DataChanged)
        change = events[0].change
        assert isinstance(change, dict)
        document = change.get("fullDocument", change)  # change stream event, or the document
        assert (document["_id"], document["x"]) == ("user-doc", 1)
    finally:
        subscription.close()


def test_change_events_reach_listeners(
    mode_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    feed = LeaderFeed(
        mode_kit.backend(), heartbeat_interval=0.1, election_timeout_min=0.4,
        election_timeout_max=0.6,
    )  # fmt: skip
    changes: list[object] = []
    feed.on("change", changes.append)
    watched = watched_collection(open_database(mode_kit), mode_kit)
    try:
        feed.start()
        watched.insert_one({"_id": "hello", "y": 2})
        wait_until(lambda: changes, DEADLINE, message="a change event")
        assert len(changes) == 1
    finally:
        feed.stop()


def test_schedule_writes_are_not_record_changes(mode_kit: BackendKit) -> None:
    backend = mode_kit.connected()
    subscription = backend.subscribe()
    try:
        term, version = claim(backend)
        assert backend.write_entry(term, "tok-a", "job", None, "v1")
        assert backend.write_entry(term, "tok-a", "job", "v1", "v2")
        assert backend.renew(term, "tok-a").ok
        events = poll_until(subscription, lambda seen: version + 1 in versions(seen))
        assert versions(events) == [version, version + 1]
    finally:
        subscription.close()


# -- records, foreign data, schedule ----------------------------------------------------------


def test_reads_and_writes_carry_the_server_clock(mongodb_changestream_kit: BackendKit) -> None:
    backend = mongodb_changestream_kit.connected()
    read = backend.read()
    assert read.store_time is not None and abs(read.store_time - time.time()) < 60
    written = backend.claim(MISSING_VERSION, "a", "tok", min_term=1, min_version=1).observation
    assert written.record is not None and written.store_time == written.record.renewed_at


def test_a_claim_over_foreign_data_loses_to_an_earlier_one(
    mongodb_changestream_kit: BackendKit,
) -> None:
    first, second = mongodb_changestream_kit.connected(), mongodb_changestream_kit.connected()
    mongodb_changestream_kit.corrupt(mongodb_changestream_kit.name)
    assert second.read().corrupt
    won = first.claim(CORRUPT_VERSION, "first", "tok-1", min_term=1, min_version=1)
    assert won.ok
    lost = second.claim(CORRUPT_VERSION, "second", "tok-2", min_term=1, min_version=1)
    assert not lost.ok
    assert lost.observation.record == won.observation.record


def test_a_malformed_record_in_our_format_is_foreign(
    mongodb_changestream_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    backend = mongodb_changestream_kit.connected()
    records = watched_collection(open_database(mongodb_changestream_kit), mongodb_changestream_kit)
    malformed = {"format": RECORD_FORMAT, "holder": "h", "token": "t", "term": "7", "version": 3}
    records.replace_one({"_id": mongodb_changestream_kit.name}, malformed, upsert=True)
    assert backend.read().corrupt
    assert not backend.claim(3, "a", "tok", min_term=1, min_version=1).ok  # version 3 is not ours
    result = backend.claim(CORRUPT_VERSION, "a", "tok", min_term=1, min_version=1)
    assert result.ok and result.observation.record is not None
    assert result.observation.record.holder == "a"


_VALID_RECORD = {
    "format": RECORD_FORMAT, "holder": "h", "token": "t", "term": 5, "version": 7,
    "nominee": None, "renewed_at": 1.5,
}  # fmt: skip
_MISSING = object()
_VARIANTS: list[tuple[str, object]] = [
    ("format", "leaderfeed/2"), ("format", [RECORD_FORMAT]), ("format", _MISSING),
    ("term", 5.0), ("term", Int64(5)), ("term", 5.5), ("term", 0), ("term", -3), ("term", "5"),
    ("term", True), ("term", float("inf")), ("term", float("nan")), ("term", [5]),
    ("term", Decimal128("5")), ("term", _MISSING), ("version", 10**15), ("version", None),
    ("holder", None), ("holder", 5), ("token", None), ("token", ["t"]), ("nominee", "n"),
    ("nominee", 3), ("nominee", _MISSING), ("renewed_at", None), ("renewed_at", _MISSING),
    ("renewed_at", 3), ("renewed_at", "x"), ("renewed_at", float("inf")),
    ("renewed_at", float("nan")), ("renewed_at", True), ("extra", {"any": "thing"}),
]  # fmt: skip


def test_the_servers_record_check_agrees_with_decode_record(
    mongodb_changestream_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    """Every compare-and-set filters on the server's copy of decode_record's rules."""
    records = watched_collection(open_database(mongodb_changestream_kit), mongodb_changestream_kit)
    variants: list[Doc] = [dict(_VALID_RECORD), {**_VALID_RECORD, "holder": None, "token": None}]
    for field, value in _VARIANTS:
        doc = {k: v for k, v in _VALID_RECORD.items() if k != field}
        variants.append(doc if value is _MISSING else {**doc, field: value})
    disagreements = []
    for index, doc in enumerate(variants):
        records.insert_one({"_id": index, **doc})
        python_says = _valid(doc)
        server_says = records.find_one({"_id": index, "$expr": documents.VALID_RECORD}) is not None
        if server_says != python_says:
            disagreements.append((doc, python_says, server_says))
    assert disagreements == []
    assert sum(1 for doc in variants if _valid(doc)) >= 8  # both kinds were tried


def _valid(doc: Doc) -> bool:
    try:
        decode_record(doc)
    except ValueError:
        return False
    return True


def test_schedule_entry_names_may_hold_dots_dollars_and_percent(
    mongodb_capped_kit: BackendKit,
) -> None:
    backend = mongodb_capped_kit.connected()
    term, _ = claim(backend)
    names = ["tasks.cleanup", "$where", "", "100%", "a%2Eb", "nul\x00byte", "ünïcode"]
    for index, name in enumerate(names):
        assert backend.write_entry(term, "tok-a", name, None, f"state-{index}")
    assert backend.read_entries() == {name: f"state-{i}" for i, name in enumerate(names)}
    assert backend.write_entry(term, "tok-a", "tasks.cleanup", "state-0", "next")
    assert backend.read_entries()["tasks.cleanup"] == "next"


# -- the subscription's own bounds ------------------------------------------------------------


def test_poll_keeps_to_its_timeout_and_close_wakes_it(mode_kit: BackendKit) -> None:
    subscription = mode_kit.connected().subscribe()
    for timeout in (0.03, 0.25):
        started = time.monotonic()
        assert subscription.poll(timeout) == []
        assert time.monotonic() - started < timeout + 0.1  # one getMore may overrun by its RTT
    outcome: list[BaseException | list[FeedEvent]] = []

    def long_poll() -> None:
        try:
            outcome.append(subscription.poll(30))
        except BackendUnavailable as exc:
            outcome.append(exc)

    poller = threading.Thread(target=long_poll)
    poller.start()
    wait_until(poller.is_alive, DEADLINE)  # blocked in a getMore, or about to be: both must end
    closed_at = time.monotonic()
    subscription.close()
    poller.join(5)
    assert not poller.is_alive() and time.monotonic() - closed_at < 1.0
    assert outcome and isinstance(outcome[0], BackendUnavailable)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"notify": "sometimes"}, "notify"),
        ({"collection": ""}, "collection"),
        ({"collection": "a$b"}, "collection"),
        ({"database": 5}, "database"),
        ({"capped_collection": None}, "capped_collection"),
        ({"collection_size_bytes": 0}, "collection_size_bytes"),
        ({"collection_max_docs": True}, "collection_max_docs"),
        ({"collection_max_docs": 2.5}, "collection_max_docs"),
        ({"size": 100}, "size"),
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        MongoBackend("mongodb://127.0.0.1:1/db", options=options)


def test_a_malformed_url_is_a_configuration_error_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        MongoBackend("mongodb://user:pw-hunter2@127.0.0.1:notaport/db")
    assert "pw-hunter2" not in str(raised.value)


def test_database_comes_from_the_url_unless_given() -> None:
    assert MongoBackend("mongodb://h/app?directConnection=true").database_name == "app"
    assert MongoBackend("mongodb://h/").database_name == "leaderfeed"
    assert MongoBackend("mongodb+srv://c.example.net/svc").database_name == "svc"
    assert MongoBackend("mongodb://h/app", options={"database": "other"}).database_name == "other"


def test_missing_pymongo_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymongo", None)  # "import pymongo" now fails
    for module in [m for m in sys.modules if m.startswith("celery_leaderfeed.backends.mongodb")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ConfigurationError, match=r"celery-leaderfeed\[mongodb\]"):
        backend_class("mongodb://localhost/")


# -- once-only marks ---------------------------------------------------------------------------


def test_marks_past_their_expiry_count_as_absent_before_the_ttl_monitor_runs(
    mongodb_changestream_kit: BackendKit, open_database: Callable[[BackendKit], Database[Doc]]
) -> None:
    import datetime

    kit = mongodb_changestream_kit
    backend = kit.connected()
    marks = open_database(kit)[f"{kit.options['collection']}_marks"]
    index = {i["name"]: i for i in marks.list_indexes()}[documents.MARK_TTL_INDEX]
    assert (dict(index["key"]), index["expireAfterSeconds"]) == ({"expires_at": 1}, 0)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    marks.insert_many(
        [
            {"_id": f"{kit.name}/expired", "value": "old", "expires_at": past},
            {"_id": f"{kit.name}/foreign", "something": "else"},  # no expiry: absent too
        ]
    )
    assert backend.mark_once("expired", "new", 60) is None
    assert backend.mark_once("foreign", "new", 60) is None
    assert backend.mark_once("expired", "x", 60) == "new"
    stored = marks.find_one({"_id": f"{kit.name}/expired"})
    assert stored is not None and stored["value"] == "new"
    assert stored["expires_at"] > past.replace(tzinfo=None)
