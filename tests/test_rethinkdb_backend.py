"""What is particular to the RethinkDB backend; the shared suites cover the rest.

Most tests run on ``rethinkdb_kit`` (the session server, or LEADERFEED_TEST_RETHINKDB_URL, in a
table of the test's own); those that pause, drop or restart a server start a private
``rethinkdb_wire`` double.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from rethinkdb import r

from celery_leaderfeed import BackendUnavailable, ConfigurationError
from celery_leaderfeed.backends import backend_class, backend_from_url
from celery_leaderfeed.backends.base import Backend, DataChanged, FeedEvent, RecordChanged
from celery_leaderfeed.backends.rethinkdb import RethinkBackend
from celery_leaderfeed.record import CORRUPT_VERSION, MISSING_VERSION
from harness.helpers import wait_until
from harness.servers.rethinkdb_wire.process import RethinkDBWireServer, start_rethinkdb_wire_server
from tests.fixtures.rethinkdb_server import TEST_PASSWORD, connect, database_of
from tests.kits import BackendKit

DEADLINE = 5.0


@pytest.fixture
def private_server() -> Iterator[RethinkDBWireServer]:
    server = start_rethinkdb_wire_server(password=TEST_PASSWORD)
    yield server
    server.stop()


@pytest.fixture
def raw(rethinkdb_kit: BackendKit) -> Iterator[Any]:
    """The kit's table, and a driver connection to it, for writing behind the backend's back."""
    conn = connect(rethinkdb_kit.url)
    table = r.db(database_of(rethinkdb_kit.url)).table(rethinkdb_kit.options["table"])
    yield table, conn
    conn.close(noreply_wait=False)


def claim(backend: Backend, holder: str = "a", token: str = "tok-a") -> Any:
    result = backend.claim(MISSING_VERSION, holder, token, min_term=1, min_version=1)
    assert result.ok, result
    return result.observation.record


def drain(subscription: Any, until: Any, timeout: float = DEADLINE) -> list[FeedEvent]:
    """Poll until ``until(events)`` holds."""
    events: list[FeedEvent] = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"the feed delivered only {events}"
        events += subscription.poll(0.1)
    return events


# -- configuration -------------------------------------------------------------------------------


def test_url_parts_and_defaults() -> None:
    backend = RethinkBackend("rethinkdb://bob:p%40ss%3Aword@db.example.net:29015/apps")
    assert (backend.host, backend.port, backend.user, backend.db) == (
        "db.example.net",
        29015,
        "bob",
        "apps",
    )
    assert backend._password == "p@ss:word"
    assert "p%40ss" not in repr(backend) and "p@ss" not in repr(backend)
    plain = RethinkBackend("rethinkdb://h")
    assert (plain.port, plain.user, plain._password, plain.db) == (28015, "admin", "", "leaderfeed")
    assert plain.table_name == "leaderfeed"
    assert RethinkBackend("rethinkdb://").host == "localhost"
    assert RethinkBackend("rethinkdb://[::1]:1234/").host == "::1"
    assert RethinkBackend("rethinkdb://h", options={"table": "elections"}).table_name == "elections"


@pytest.mark.parametrize(
    ("url", "options", "timeout", "message"),
    [
        ("rethinkdb://u:hunter2@h:port/db", {}, 1.0, "invalid RethinkDB URL"),
        ("rethinkdb://u:hunter2@h/my.db", {}, 1.0, "must be a RethinkDB name"),
        ("rethinkdb://u:hunter2@h/a/b", {}, 1.0, "must be a RethinkDB name"),
        ("rethinkdb://u:hunter2@h/db?timeout=3", {}, 1.0, "no query string"),
        ("rethinkdb://u:hunter2@h/db", {"table": 7}, 1.0, "option 'table'"),
        ("rethinkdb://u:hunter2@h/db", {"table": "a b"}, 1.0, "option 'table'"),
        ("rethinkdb://u:hunter2@h/db", {"table": ""}, 1.0, "option 'table'"),
        ("rethinkdb://u:hunter2@h/db", {"collection": "x"}, 1.0, "unknown option"),
        ("rethinkdb://u:hunter2@h/db", {}, 0, "timeout"),
        ("rethinkdb://u:hunter2@h/db", {}, float("nan"), "timeout"),
        ("rethinkdb://u:hunter2@h/db", {}, True, "timeout"),
    ],
)
def test_bad_urls_and_options_are_configuration_errors(
    url: str, options: dict[str, Any], timeout: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        backend_from_url(url, options=options, timeout=timeout)
    assert "hunter2" not in str(raised.value)


def test_a_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rethinkdb", None)  # "from rethinkdb import r" now fails
    for module in [m for m in sys.modules if m.startswith("celery_leaderfeed.backends.rethinkdb")]:
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ConfigurationError, match=r"pip install 'celery-leaderfeed\[rethinkdb\]'"):
        backend_class("rethinkdb://localhost/")


def test_constructing_opens_no_connection(private_server: RethinkDBWireServer) -> None:
    backend = RethinkBackend(private_server.url, timeout=1.0)
    assert backend._conn is None  # not fork-safe: connections are made in connect()
    backend.connect()
    assert backend._conn is not None and backend._conn.is_open()
    backend.close()
    assert backend._conn is None
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.read()


def test_a_wrong_password_is_unavailable_and_never_shown(
    private_server: RethinkDBWireServer,
) -> None:
    url = f"rethinkdb://admin:not-{TEST_PASSWORD}@{private_server.host}:{private_server.port}"
    backend = RethinkBackend(url, timeout=1.0)
    with pytest.raises(BackendUnavailable, match="Wrong password") as raised:
        backend.connect()
    assert TEST_PASSWORD not in str(raised.value)


# -- creation ------------------------------------------------------------------------------------


def test_database_and_table_creation_races_from_many_threads(rethinkdb_url: str) -> None:
    db = f"race_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(rethinkdb_url)._replace(path=f"/{db}"))
    backends = [RethinkBackend(url, name=f"e{i}", timeout=5.0) for i in range(6)]
    barrier = threading.Barrier(len(backends))
    errors: list[BaseException] = []

    def start(backend: Backend) -> None:
        try:
            backend.connect()
            barrier.wait()
            backend.create()
            claim(backend)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    conn = connect(rethinkdb_url)
    try:
        assert errors == []
        assert r.db_list().contains(db).run(conn)
        assert sorted(r.db(db).table_list().run(conn)) == ["leaderfeed", "leaderfeed_marks"]
        assert r.db(db).table("leaderfeed").count().run(conn) == len(backends)
    finally:
        for backend in backends:
            backend.close()
        r.db_drop(db).run(conn)
        conn.close(noreply_wait=False)


def test_a_lost_table_is_made_again_only_after_create(rethinkdb_kit: BackendKit, raw: Any) -> None:
    creator = rethinkdb_kit.connected()
    plain = rethinkdb_kit.backend()
    plain.connect()  # no create(): it must not make tables behind the operator's back
    claim(creator)
    table, conn = raw
    r.db(database_of(rethinkdb_kit.url)).table_drop(rethinkdb_kit.options["table"]).run(conn)
    with pytest.raises(BackendUnavailable, match="does not exist"):
        plain.read()
    assert creator.read().record is None  # made again, empty (as after a server restart)
    assert table.count().run(conn) == 0
    subscription = creator.subscribe()
    subscription.close()


# -- documents and validity ----------------------------------------------------------------------


def test_the_record_is_one_document_with_server_time(rethinkdb_kit: BackendKit, raw: Any) -> None:
    backend = rethinkdb_kit.connected()
    record = claim(backend, "node-a", "tok-a")
    assert backend.write_entry(record.term, "tok-a", "job", None, "state")
    table, conn = raw
    doc = table.get(rethinkdb_kit.name).run(conn)
    assert doc["id"] == rethinkdb_kit.name
    assert (doc["holder"], doc["token"], doc["format"]) == ("node-a", "tok-a", "leaderfeed/1")
    # A number of seconds (RethinkDB sends a whole second, 1 time in 1000, as an integer).
    renewed_at = doc["renewed_at"]
    assert isinstance(renewed_at, int | float) and not isinstance(renewed_at, bool)
    assert abs(renewed_at - time.time()) < 60
    assert doc["term"] == doc["version"] == int(doc["renewed_at"] * 1000)
    assert doc["schedule"] == {"entry:job": "state"}


FOREIGN = [
    {"value": "not a leader record"},
    {"format": "leaderfeed/2", "holder": None, "token": None, "term": 5, "version": 5},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": "5", "version": 5},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": 5.5, "version": 5},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": 0, "version": 5},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": True, "version": 5},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": 5},
    {"format": "leaderfeed/1", "holder": "a", "token": None, "term": 5, "version": 5},
    {"format": "leaderfeed/1", "holder": 3, "token": "t", "term": 5, "version": 5},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": 5, "version": 5,
     "nominee": ["b"]},
    {"format": "leaderfeed/1", "holder": None, "token": None, "term": 5, "version": 5,
     "renewed_at": "yesterday"},
]  # fmt: skip


@pytest.mark.parametrize("doc", FOREIGN)
def test_foreign_documents_are_never_taken_for_a_record(
    rethinkdb_kit: BackendKit, raw: Any, doc: dict[str, Any]
) -> None:
    # The server's check and decode_record must agree, or claims over such data would stall.
    backend = rethinkdb_kit.connected()
    table, conn = raw
    table.insert({"id": rethinkdb_kit.name, **doc, "schedule": {"entry:x": "junk"}}).run(conn)
    assert backend.read().corrupt
    assert not backend.claim(MISSING_VERSION, "a", "tok", min_term=1, min_version=1).ok
    assert not backend.renew(5, "t").ok
    assert not backend.nominate(5, "b").ok
    assert not backend.write_entry(5, "t", "x", "junk", "new")
    result = backend.claim(CORRUPT_VERSION, "a", "tok", min_term=1, min_version=1)
    assert result.ok and result.observation.record is not None
    assert backend.read_entries() == {}  # the foreign document's contents are not ours


def test_a_record_written_by_hand_with_loose_types_is_a_record(
    rethinkdb_kit: BackendKit, raw: Any
) -> None:
    backend = rethinkdb_kit.connected()
    table, conn = raw
    # Missing optional fields read as null; an integral float is an integer (as decode_record).
    table.insert(
        {"id": rethinkdb_kit.name, "format": "leaderfeed/1", "term": 7.0, "version": 9}
    ).run(conn)
    observation = backend.read()
    assert observation.record is not None and observation.record.vacant
    result = backend.claim(9, "a", "tok", min_term=1, min_version=1)
    assert result.ok and result.observation.record is not None
    term, version = result.observation.record.term, result.observation.record.version
    # Integers counted up from 7 and 9 - by more than one: a claim's term and version are never
    # further than a second below the store's clock in ms (terms cannot repeat after a rollback).
    assert type(term) is int and type(version) is int
    assert term > 7 and version > 9


def test_schedule_entries_with_any_name_survive_every_record_write(
    rethinkdb_kit: BackendKit,
) -> None:
    backend = rethinkdb_kit.connected()
    record = claim(backend)
    names = ["$reql_type$", "a.b", "", "with space", "ünï", "entry:nested", "$x"]
    for index, name in enumerate(names):
        assert backend.write_entry(record.term, "tok-a", name, None, f"v{index}")
    expected = {name: f"v{index}" for index, name in enumerate(names)}
    assert backend.read_entries() == expected
    # Writing the value already stored is a success (not a refusal), and it stays fenced.
    assert backend.write_entry(record.term, "tok-a", "a.b", "v1", "v1")
    assert not backend.write_entry(record.term, "tok-a", "a.b", "v0", "v1")
    renewed = backend.renew(record.term, "tok-a").observation.record
    assert renewed is not None
    assert backend.nominate(renewed.version, "b").ok
    resigned = backend.resign(record.term, "tok-a", "b").observation.record
    assert resigned is not None
    assert backend.claim(resigned.version, "b", "tok-b", min_term=1, min_version=1).ok
    assert backend.read_entries() == expected


# -- feeds ---------------------------------------------------------------------------------------


def test_change_events_report_other_documents_only(rethinkdb_kit: BackendKit, raw: Any) -> None:
    backend = rethinkdb_kit.connected()
    table, conn = raw
    table.insert({"id": "before", "n": 0}).run(conn)  # existing data is not replayed
    other = rethinkdb_kit.connected(f"other-{uuid.uuid4().hex[:6]}")
    subscription = backend.subscribe()
    try:
        claim(other, "x", "tok-x")  # another election's record: not user data
        table.insert({"id": "user-1", "n": 1}).run(conn)
        table.get("user-1").update({"n": 2}).run(conn)
        table.get("user-1").delete().run(conn)
        claim(backend, "y", "tok-y")
        events = drain(
            subscription,
            lambda seen: (
                sum(isinstance(e, DataChanged) for e in seen) >= 3
                and any(isinstance(e, RecordChanged) and e.observation.leader_id for e in seen)
            ),
        )
        events += subscription.poll(0.2)
        changes = [e.change for e in events if isinstance(e, DataChanged)]
        assert changes == [
            {"old_val": None, "new_val": {"id": "user-1", "n": 1}},
            {"old_val": {"id": "user-1", "n": 1}, "new_val": {"id": "user-1", "n": 2}},
            {"old_val": {"id": "user-1", "n": 2}, "new_val": None},
        ]
        # The initial value is awaited but not delivered: the engine's read supersedes it.
        records = [e.observation for e in events if isinstance(e, RecordChanged)]
        assert [o.leader_id for o in records] == ["y"]
    finally:
        subscription.close()


def test_the_record_feed_delivers_writes_within_milliseconds(rethinkdb_kit: BackendKit) -> None:
    watcher, writer = rethinkdb_kit.connected(), rethinkdb_kit.connected()
    subscription = watcher.subscribe()
    try:
        record = claim(writer)
        drain(subscription, lambda seen: any(e.observation.leader_id == "a" for e in seen))
        latencies = []
        for _ in range(30):
            sent = time.monotonic()
            version = writer.renew(record.term, "tok-a").observation.record.version
            drain(
                subscription,
                lambda seen, v=version: any(
                    e.observation.record is not None and e.observation.record.version == v
                    for e in seen
                ),
            )
            latencies.append(time.monotonic() - sent)
        median = statistics.median(latencies)
        worst = max(latencies)
        print(f"write->event latency: median {median * 1e3:.1f} ms, max {worst * 1e3:.1f} ms")
        assert median < 0.05, latencies
    finally:
        subscription.close()


def test_close_wakes_a_blocked_poll_and_a_closed_feed_refuses(rethinkdb_kit: BackendKit) -> None:
    subscription = rethinkdb_kit.connected().subscribe()
    returned: list[float] = []

    def blocked_poll() -> None:
        started = time.monotonic()
        try:
            subscription.poll(30)
        except BackendUnavailable:
            returned.append(time.monotonic() - started)

    thread = threading.Thread(target=blocked_poll)
    thread.start()
    wait_until(thread.is_alive, DEADLINE)
    subscription.close()
    thread.join(DEADLINE)
    assert returned and returned[0] < DEADLINE
    feed_threads = f"leaderfeed-rethinkdb[{rethinkdb_kit.name}]"
    wait_until(
        lambda: all(thread.name != feed_threads for thread in threading.enumerate()),
        DEADLINE,
        message="the feed threads to end",
    )
    with pytest.raises(BackendUnavailable, match="closed"):
        subscription.poll(0)


def test_dropped_connections_break_the_feed_and_calls_reconnect(
    private_server: RethinkDBWireServer,
) -> None:
    backend = RethinkBackend(private_server.url, name="drops", timeout=2.0)
    backend.connect()
    backend.create()
    subscription = backend.subscribe()
    try:
        assert subscription.poll(0.05) == []
        private_server.drop_connections()

        def broken() -> bool:
            try:
                subscription.poll(0.05)
            except BackendUnavailable:
                return True
            return False

        wait_until(broken, DEADLINE, message="the feed to report the dropped connection")
        with pytest.raises(BackendUnavailable):  # the old connection is gone ...
            backend.read()
        assert backend.read().record is None  # ... and the next call connects again
    finally:
        subscription.close()
        backend.close()


def test_a_hung_server_fails_calls_within_the_timeout(private_server: RethinkDBWireServer) -> None:
    timeout = 0.5
    backend = RethinkBackend(private_server.url, name="hung", timeout=timeout)
    backend.connect()
    backend.create()
    record = claim(backend)
    subscription = backend.subscribe()
    private_server.pause()  # SIGSTOP: connections stay open, nothing is answered
    try:
        calls = {
            "renew": lambda: backend.renew(record.term, "tok-a"),
            "read": backend.read,
            "write_entry": lambda: backend.write_entry(record.term, "tok-a", "job", None, "v"),
            "connect": backend.connect,
            "subscribe": backend.subscribe,
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="no answer"):
                call()
            elapsed = time.monotonic() - started
            assert timeout * 0.9 <= elapsed < timeout + 0.5, (name, elapsed)
        started = time.monotonic()
        assert subscription.poll(0.3) == []  # a silent feed is not an error, and never blocks
        assert time.monotonic() - started < 0.3 + 0.5
    finally:
        private_server.resume()
    assert backend.renew(record.term, "tok-a").ok  # a fresh connection works again
    subscription.close()
    backend.close()


# -- once-only marks ---------------------------------------------------------------------------


def test_expired_marks_are_swept_a_bounded_number_at_a_time(
    rethinkdb_kit: BackendKit, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_leaderfeed.backends.rethinkdb import backend as rethink_module

    _, conn = raw
    backend = rethinkdb_kit.connected()
    other = rethinkdb_kit.connected(f"other-{uuid.uuid4().hex[:8]}")
    marks = r.db(database_of(rethinkdb_kit.url)).table(f"{rethinkdb_kit.options['table']}_marks")
    for index in range(4):
        assert backend.mark_once(f"old-{index}", "v", 0.05) is None
    assert other.mark_once("old", "v", 0.05) is None  # any election's expired marks go
    assert backend.mark_once("kept", "v", 60) is None
    # A foreign document without an expiry counts as expired too.
    marks.insert({"id": "foreign", "value": 1}).run(conn)

    def expired() -> int:
        now = r.now().to_epoch_time()
        return int(marks.filter(lambda d: d["expires_at"].default(0).le(now)).count().run(conn))

    wait_until(lambda: expired() == 6, DEADLINE, message="six expired marks")
    monkeypatch.setattr(rethink_module, "MARK_SWEEP_LIMIT", 4)
    assert backend.mark_once("new-1", "v", 60) is None  # no sweep yet: not due
    assert expired() == 6
    backend._next_sweep = 0.0  # due now
    assert backend.mark_once("new-2", "v", 60) is None
    assert expired() == 2  # at most the limit
    backend._next_sweep = 0.0
    assert backend.mark_once("new-3", "v", 60) is None
    assert expired() == 0
    assert backend.mark_once("kept", "x", 60) == "v"
    assert marks.count().run(conn) == 4  # kept, new-1, new-2, new-3
