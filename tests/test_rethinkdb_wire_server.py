"""The rethinkdb_wire test double, exercised with the official driver over real TCP."""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from rethinkdb import r
from rethinkdb.errors import (
    ReqlAuthError,
    ReqlDriverError,
    ReqlNonExistenceError,
    ReqlOpFailedError,
    ReqlQueryLogicError,
    ReqlServerCompileError,
    ReqlTimeoutError,
    ReqlUserError,
)

from harness.servers.rethinkdb_wire.process import start_rethinkdb_wire_server

FEED_WAIT = 5.0  # deadline for a change to reach a feed (it normally takes ~1 ms)


@pytest.fixture(scope="module")
def server():
    handle = start_rethinkdb_wire_server()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def password_server():
    handle = start_rethinkdb_wire_server(password="s3cret")
    yield handle
    handle.stop()


@pytest.fixture
def private_server():
    """A server of its own, for tests that drop connections or restart it."""
    handle = start_rethinkdb_wire_server()
    yield handle
    handle.stop()


def connect(server, **kwargs):
    return r.connect(host=server.host, port=server.port, **kwargs)


@pytest.fixture
def conn(server):
    connection = connect(server)
    yield connection
    connection.close(noreply_wait=False)


@pytest.fixture
def other_conn(server):
    connection = connect(server)
    yield connection
    connection.close(noreply_wait=False)


@pytest.fixture
def db_name(conn):
    name = f"db_{uuid.uuid4().hex[:10]}"
    r.db_create(name).run(conn)
    return name


@pytest.fixture
def table(conn, db_name):
    r.db(db_name).table_create("docs").run(conn)
    return r.db(db_name).table("docs")


def within(seconds: float, action: Callable[[], Any]) -> Any:
    """Run ``action`` and fail (instead of hanging) if it does not finish in time."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test thread)
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"blocked for more than {seconds}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- handshake -----------------------------------------------------------------------


def test_handshake_as_admin_without_password(server):
    with connect(server) as connection:
        assert r.expr(1).run(connection) == 1
        info = connection.server()
        assert info["proxy"] is False
        assert info["id"]
    with r.connect(url=server.url) as connection:
        assert r.expr("via url").run(connection) == "via url"


def test_handshake_with_password(password_server):
    with connect(password_server, password="s3cret") as connection:
        assert r.expr([1, 2]).run(connection) == [1, 2]
    with r.connect(url=password_server.url) as connection:
        assert r.expr(True).run(connection) is True


@pytest.mark.parametrize(
    ("user", "password", "message"),
    [
        ("admin", "wrong", "Wrong password"),
        ("admin", "", "Wrong password"),
        ("bob", "s3cret", "Unknown user"),
    ],
)
def test_handshake_rejects_bad_credentials(password_server, user, password, message):
    with pytest.raises(ReqlAuthError, match=message):
        connect(password_server, user=user, password=password)


# --- databases and tables ------------------------------------------------------------


def test_db_and_table_create_and_errors(conn, db_name):
    with pytest.raises(ReqlOpFailedError) as failure:
        r.db_create(db_name).run(conn)
    assert failure.value.message == f"Database `{db_name}` already exists."
    assert r.db(db_name).table_create("t").run(conn)["tables_created"] == 1
    with pytest.raises(ReqlOpFailedError) as failure:
        r.db(db_name).table_create("t").run(conn)
    assert failure.value.message == f"Table `{db_name}.t` already exists."
    with pytest.raises(ReqlOpFailedError) as failure:
        r.db(db_name).table("missing").run(conn)
    assert failure.value.message == f"Table `{db_name}.missing` does not exist."
    with pytest.raises(ReqlOpFailedError) as failure:
        r.db("no_such_db").table("t").run(conn)
    assert failure.value.message == "Database `no_such_db` does not exist."
    assert db_name in r.db_list().run(conn)
    assert r.db(db_name).table_list().run(conn) == ["t"]
    assert r.db(db_name).table("t").wait().run(conn) == {"ready": 1}
    assert r.db(db_name).table_drop("t").run(conn)["tables_dropped"] == 1
    assert r.db(db_name).table_list().run(conn) == []
    assert r.db_drop(db_name).run(conn)["dbs_dropped"] == 1
    assert db_name not in r.db_list().run(conn)


def test_connection_default_db_and_primary_key(server, db_name):
    with connect(server, db=db_name) as connection:
        r.table_create("people", primary_key="name").run(connection)
        r.table("people").insert({"name": "ada"}).run(connection)
        assert r.table("people").get("ada").run(connection) == {"name": "ada"}
        assert r.db(db_name).table("people").count().run(connection) == 1


# --- writes --------------------------------------------------------------------------


def test_insert_get_and_conflicts(conn, table):
    result = table.insert([{"id": 1, "n": 1}, {"n": 2}]).run(conn)
    assert result["inserted"] == 2
    assert len(result["generated_keys"]) == 1
    assert table.get(1).run(conn) == {"id": 1, "n": 1}
    assert table.get(result["generated_keys"][0]).run(conn)["n"] == 2
    assert table.get("missing").run(conn) is None

    duplicate = table.insert({"id": 1, "n": 9}).run(conn)
    assert (duplicate["errors"], duplicate["inserted"]) == (1, 0)
    assert duplicate["first_error"].startswith("Duplicate primary key `id`")
    assert table.insert({"id": 1, "m": 5}, conflict="update").run(conn)["replaced"] == 1
    assert table.get(1).run(conn) == {"id": 1, "n": 1, "m": 5}
    assert table.insert({"id": 1}, conflict="replace").run(conn)["replaced"] == 1
    assert table.get(1).run(conn) == {"id": 1}
    merged = table.insert(
        {"id": 1, "n": 3},
        conflict=lambda key, old, new: old.merge({"n": new["n"] * 2}),
        return_changes=True,
    ).run(conn)
    assert merged["changes"] == [{"old_val": {"id": 1}, "new_val": {"id": 1, "n": 6}}]


def test_replace_with_branch_is_compare_and_set(conn, table):
    table.insert({"id": "lock", "owner": "a", "version": 1}).run(conn)

    def cas(expected_version, owner):
        return (
            table.get("lock")
            .replace(
                lambda doc: r.branch(
                    doc["version"].eq(expected_version),
                    doc.merge({"owner": owner, "version": doc["version"] + 1}),
                    doc,
                ),
                return_changes=True,
            )
            .run(conn)
        )

    won = cas(1, "b")
    assert (won["replaced"], won["unchanged"]) == (1, 0)
    assert won["changes"][0]["new_val"] == {"id": "lock", "owner": "b", "version": 2}
    lost = cas(1, "c")
    assert (lost["replaced"], lost["unchanged"], lost["changes"]) == (0, 1, [])
    assert table.get("lock").run(conn)["owner"] == "b"

    # replace on a missing document inserts; returning null deletes; null+null skips
    assert (
        table.get("new")
        .replace(lambda doc: r.branch(doc.eq(None), {"id": "new"}, doc))
        .run(conn)["inserted"]
        == 1
    )
    assert table.get("new").replace(lambda doc: None).run(conn)["deleted"] == 1
    assert table.get("new").replace(lambda doc: None).run(conn)["skipped"] == 1
    assert table.get("nope").update({"x": 1}).run(conn)["skipped"] == 1
    assert table.get("lock").delete().run(conn)["deleted"] == 1
    assert table.get("lock").delete().run(conn)["skipped"] == 1


def test_cas_is_atomic_across_connections(server, conn, table):
    table.insert({"id": "counter", "value": 0}).run(conn)
    winners: list[str] = []

    def contender(name):
        with connect(server) as connection:
            for _ in range(25):
                table.get("counter").update(lambda doc: {"value": doc["value"] + 1}).run(connection)
            result = (
                table.get("leader")
                .replace(lambda doc: r.branch(doc.eq(None), {"id": "leader", "owner": name}, doc))
                .run(connection)
            )
            if result["inserted"]:
                winners.append(name)

    threads = [threading.Thread(target=contender, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert table.get("counter").run(conn)["value"] == 100
    assert len(winners) == 1
    assert table.get("leader").run(conn)["owner"] == winners[0]


def test_error_in_write_function_is_counted_not_raised(conn, table):
    table.insert({"id": 1, "owner": "a"}).run(conn)
    result = (
        table.get(1)
        .replace(lambda doc: r.branch(doc["owner"].eq("b"), doc, r.error("held by someone else")))
        .run(conn)
    )
    assert (result["errors"], result["replaced"]) == (1, 0)
    assert result["first_error"] == "held by someone else"
    missing_field = table.get(1).update(lambda doc: {"x": doc["nope"]}).run(conn)
    assert missing_field["errors"] == 1
    assert missing_field["first_error"].startswith("No attribute `nope` in object:")
    changed_key = table.get(1).replace({"id": 2}).run(conn)
    assert changed_key["first_error"].startswith("Primary key `id` cannot be changed")
    assert table.get(1).run(conn) == {"id": 1, "owner": "a"}
    with pytest.raises(ReqlUserError, match="top level"):
        r.error("top level").run(conn)


def test_non_deterministic_write_is_rejected(conn, table):
    table.insert({"id": 1}).run(conn)
    with pytest.raises(ReqlQueryLogicError, match="Could not prove argument deterministic"):
        table.get(1).update({"copy": table.get(1)}).run(conn)
    assert table.get(1).update({"copy": table.get(1)}, non_atomic=True).run(conn)["replaced"] == 1


def test_return_changes_and_selection_writes(conn, table):
    inserted = table.insert([{"id": 1, "n": 1}, {"id": 2, "n": 2}], return_changes=True).run(conn)
    assert {change["new_val"]["id"] for change in inserted["changes"]} == {1, 2}
    assert all(change["old_val"] is None for change in inserted["changes"])
    updated = table.update({"seen": True}).run(conn)
    assert updated["replaced"] == 2
    assert table.filter({"n": 2}).update({"n": 20}).run(conn)["replaced"] == 1
    deleted = table.get_all(1, 2).delete(return_changes=True).run(conn)
    assert deleted["deleted"] == 2
    assert all(c["new_val"] is None for c in deleted["changes"])
    assert table.count().run(conn) == 0


# --- reads and expressions -----------------------------------------------------------


def test_sequences_then_more_queries_on_the_same_connection(conn, table):
    table.insert([{"id": i, "even": i % 2 == 0} for i in range(5)]).run(conn)
    assert [doc["id"] for doc in table.run(conn)] == [0, 1, 2, 3, 4]
    assert [doc["id"] for doc in table.filter(lambda d: d["even"]).run(conn)] == [0, 2, 4]
    assert sorted(doc["id"] for doc in table.get_all(3, 1, 99).run(conn)) == [1, 3]
    assert table.filter(r.row["id"] > 2).count().run(conn) == 2
    assert table.count(lambda d: d["even"]).run(conn) == 3
    assert table["id"].contains(4).run(conn) is True
    assert table.has_fields("even").count().run(conn) == 5
    assert r.expr({"b": 1, "a": 2}).keys().run(conn) == ["a", "b"]
    assert [r.expr(v).type_of().run(conn) for v in (1, "x", None, {}, [], True)] == [
        "NUMBER",
        "STRING",
        "NULL",
        "OBJECT",
        "ARRAY",
        "BOOL",
    ]
    assert table.type_of().run(conn) == "TABLE"
    assert r.expr("12.5").coerce_to("number").run(conn) == 12.5
    assert r.expr(7).coerce_to("string").run(conn) == "7"
    assert r.expr({"a": 1}).has_fields("a").run(conn) is True
    assert ((r.expr(5) + 2 - 1) * 3).run(conn) == 18
    assert (r.expr("ab") + "c").run(conn) == "abc"
    assert r.expr([1]).add([2]).run(conn) == [1, 2]
    assert r.expr(1).eq(1.0).run(conn) is True
    assert r.expr(1).eq(True).run(conn) is False
    assert (r.expr(2) > 1).and_(r.expr("a") < "b").and_(~r.expr(False)).run(conn) is True
    assert r.branch(False, 1, r.expr(None), 2, 3).run(conn) == 3
    assert r.expr(5).do(lambda x: x * 2).run(conn) == 10
    assert r.do(1, 2, lambda a, b: a + b).run(conn) == 3


def test_default_catches_non_existence_errors(conn, table):
    table.insert({"id": 1, "empty": None}).run(conn)
    assert r.expr({})["a"].default(5).run(conn) == 5
    assert r.expr(None)["a"].default(5).run(conn) == 5
    assert (r.expr(None) + 5).default(2).run(conn) == 2
    assert table.get(1)["empty"].default("fallback").run(conn) == "fallback"
    assert table.get(1)["absent"]["deeper"].default(0).run(conn) == 0
    assert table.get("missing")["x"].default("no doc").run(conn) == "no doc"
    assert r.expr({})["b"].default(lambda e: e).run(conn) == "No attribute `b` in object:\n{\n}"
    with pytest.raises(ReqlNonExistenceError, match="No attribute `a` in object"):
        r.expr({})["a"].run(conn)
    with pytest.raises(ReqlQueryLogicError, match="non-object non-sequence"):
        r.expr("a")["b"].default(2).run(conn)
    with pytest.raises(ReqlUserError):
        r.expr(None).default(r.error("boom")).run(conn)


def test_merge_nested_objects_and_literal(conn, table):
    base = {"id": 1, "meta": {"a": 1, "b": 2}, "tags": ["x"]}
    assert r.expr(base).merge({"meta": {"b": 3, "c": 4}}).run(conn)["meta"] == {
        "a": 1,
        "b": 3,
        "c": 4,
    }
    assert r.expr(base).merge({"meta": r.literal({"z": 0})}).run(conn)["meta"] == {"z": 0}
    assert "meta" not in r.expr(base).merge({"meta": r.literal()}).run(conn)
    assert r.expr(base).merge(lambda d: {"count": d["tags"].count()}).run(conn)["count"] == 1
    table.insert(base).run(conn)
    table.get(1).update({"meta": {"a": 10}}).run(conn)
    assert table.get(1).run(conn)["meta"] == {"a": 10, "b": 2}
    table.get(1).update({"meta": r.literal({"only": True})}).run(conn)
    assert table.get(1).run(conn)["meta"] == {"only": True}
    with pytest.raises(ReqlQueryLogicError, match="Stray literal"):
        r.expr({"a": r.literal(1)}).run(conn)


# --- time ----------------------------------------------------------------------------


def test_now_is_one_value_per_query_and_times_decode(conn, table):
    first, second = r.expr([r.now(), r.now()]).run(conn)
    assert first == second
    assert isinstance(first, datetime.datetime)
    assert first.utcoffset() == datetime.timedelta(0)
    assert abs(first.timestamp() - time.time()) < 5
    table.insert({"id": 1, "a": r.now(), "b": r.now()}).run(conn)
    doc = table.get(1).run(conn)
    assert doc["a"] == doc["b"]
    assert (r.now() + 30 - r.now()).run(conn) == 30
    assert r.epoch_time(1.5).to_epoch_time().run(conn) == 1.5
    assert r.epoch_time(0).run(conn) == datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    moment = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=datetime.timezone.utc)
    table.insert({"id": 2, "at": moment}).run(conn)
    assert table.get(2)["at"].run(conn) == moment
    assert (table.get(2)["at"] < r.now()).run(conn) is True
    assert table.get(2)["at"].to_epoch_time().run(conn) == moment.timestamp()
    raw = r.epoch_time(10).run(conn, time_format="raw")
    assert raw == {"$reql_type$": "TIME", "epoch_time": 10, "timezone": "+00:00"}


def test_floor_ceil_and_round(conn):
    assert r.expr(2.5).floor().run(conn) == 2
    assert r.floor(-2.5).run(conn) == -3
    assert r.expr(2.1).ceil().run(conn) == 3
    assert r.expr([r.round(2.5), r.round(-2.5), r.round(2.4)]).run(conn) == [3, -3, 2]
    millis = r.epoch_time(1700000000.123).to_epoch_time().mul(1000).floor().run(conn)
    assert millis == int(1700000000.123 * 1000)  # the same double arithmetic as Python's
    with pytest.raises(ReqlQueryLogicError, match="Expected type NUMBER but found STRING"):
        r.expr("1").floor().run(conn)


def test_lease_pattern_binds_now_once(conn, table):
    def acquire(owner, ttl):
        return (
            r.expr(r.now())
            .do(
                lambda now: table.get("leader").replace(
                    lambda doc: r.branch(
                        doc.eq(None).or_(doc["expires_at"] < now).or_(doc["owner"].eq(owner)),
                        {
                            "id": "leader",
                            "owner": owner,
                            "acquired_at": now,
                            "expires_at": now + ttl,
                        },
                        doc,
                    ),
                    return_changes=True,
                )
            )
            .run(conn)
        )

    assert acquire("a", 30)["inserted"] == 1
    lease = table.get("leader").run(conn)
    assert (lease["expires_at"] - lease["acquired_at"]).total_seconds() == 30
    assert acquire("b", 30)["unchanged"] == 1
    assert acquire("a", 60)["replaced"] == 1
    assert acquire("c", -1)["unchanged"] == 1
    table.get("leader").update({"expires_at": r.now() - 1}).run(conn)
    assert acquire("c", 30)["changes"][0]["new_val"]["owner"] == "c"


# --- changefeeds ---------------------------------------------------------------------


def test_point_changefeed_with_initial_value(conn, other_conn, table):
    feed = table.get("k").changes(include_initial=True).run(conn)
    assert feed.next(wait=FEED_WAIT) == {"new_val": None}
    started = time.monotonic()
    table.insert({"id": "k", "v": 1}).run(other_conn)
    assert feed.next(wait=FEED_WAIT) == {"old_val": None, "new_val": {"id": "k", "v": 1}}
    assert time.monotonic() - started < 1.0  # pushed at once (~1 ms), not polled
    table.insert({"id": "other"}).run(other_conn)  # not this document: not reported
    table.get("k").update({"v": 2}).run(other_conn)
    table.get("k").update({"v": 2}).run(other_conn)  # unchanged: no notification
    table.get("k").delete().run(other_conn)
    assert feed.next(wait=FEED_WAIT) == {
        "old_val": {"id": "k", "v": 1},
        "new_val": {"id": "k", "v": 2},
    }
    assert feed.next(wait=FEED_WAIT) == {"old_val": {"id": "k", "v": 2}, "new_val": None}
    feed.close()
    assert r.expr("still usable").run(conn) == "still usable"

    table.insert({"id": "k", "v": 3}).run(conn)
    typed = table.get("k").changes(include_initial=True, include_types=True).run(conn)
    assert typed.next(wait=FEED_WAIT) == {"new_val": {"id": "k", "v": 3}, "type": "initial"}
    table.get("k").update({"v": 4}).run(other_conn)
    assert typed.next(wait=FEED_WAIT)["type"] == "change"
    typed.close()

    stated = table.get("k").changes(include_initial=True, include_states=True).run(conn)
    assert [stated.next(wait=FEED_WAIT) for _ in range(3)] == [
        {"state": "initializing"},
        {"new_val": {"id": "k", "v": 4}},
        {"state": "ready"},
    ]
    stated.close()


def test_table_changefeed(conn, other_conn, table):
    table.insert([{"id": 2}, {"id": 1}]).run(conn)
    feed = table.changes(include_initial=True, include_types=True).run(conn)
    assert [feed.next(wait=FEED_WAIT) for _ in range(2)] == [
        {"new_val": {"id": 1}, "type": "initial"},
        {"new_val": {"id": 2}, "type": "initial"},
    ]
    table.insert({"id": 3}).run(other_conn)
    table.get(1).update({"x": True}).run(other_conn)
    table.get(2).delete().run(other_conn)
    assert [feed.next(wait=FEED_WAIT)["type"] for _ in range(3)] == ["add", "change", "remove"]
    plain = table.changes().run(conn)  # no initial values: first batch is empty
    table.update({"y": 1}).run(other_conn)  # one query, two changes, one batch
    changes = [plain.next(wait=FEED_WAIT) for _ in range(2)]
    assert sorted(change["new_val"]["id"] for change in changes) == [1, 3]
    assert all(set(change) == {"old_val", "new_val"} for change in changes)
    plain.close()
    feed.close()


def test_feeds_do_not_block_other_queries_on_the_same_connection(conn, table):
    first = table.get("a").changes(include_initial=True).run(conn)
    second = table.get("b").changes(include_initial=True).run(conn)
    assert first.next(wait=FEED_WAIT) == {"new_val": None}
    assert second.next(wait=FEED_WAIT) == {"new_val": None}

    def ordinary_queries():  # both feeds now have a CONTINUE parked on the server
        for i in range(20):
            table.insert({"id": f"n{i}"}).run(conn)
        table.insert({"id": "b", "v": 1}).run(conn)
        table.insert({"id": "a", "v": 1}).run(conn)
        return table.count().run(conn)

    assert within(10, ordinary_queries) == 22
    assert within(10, lambda: second.next(wait=FEED_WAIT))["new_val"] == {"id": "b", "v": 1}
    assert within(10, lambda: first.next(wait=FEED_WAIT))["new_val"] == {"id": "a", "v": 1}
    first.close()
    assert within(10, lambda: table.get("a").run(conn)) == {"id": "a", "v": 1}
    second.close()


def test_dropping_the_table_aborts_its_feeds(conn, other_conn, db_name, table):
    feed = table.changes().run(conn)
    r.db(db_name).table_drop("docs").run(other_conn)
    with pytest.raises(ReqlOpFailedError, match=r"Changefeed aborted \(table unavailable\)"):
        feed.next(wait=FEED_WAIT)
    assert r.expr(1).run(conn) == 1


def test_feed_closed_on_connection_drop_and_reopenable(private_server):
    connection = connect(private_server)
    r.db("test").table_create("t").run(connection)
    table = r.db("test").table("t")
    feed = table.get(1).changes(include_initial=True).run(connection)
    assert feed.next(wait=FEED_WAIT) == {"new_val": None}
    private_server.drop_connections()
    with pytest.raises(ReqlDriverError):
        feed.next(wait=FEED_WAIT)
    assert not connection.is_open()

    connection.reconnect(noreply_wait=False)
    feed = table.get(1).changes(include_initial=True).run(connection)
    assert feed.next(wait=FEED_WAIT) == {"new_val": None}
    with connect(private_server) as writer:
        table.insert({"id": 1}).run(writer)
    assert feed.next(wait=FEED_WAIT) == {"old_val": None, "new_val": {"id": 1}}
    connection.close(noreply_wait=False)


def test_restart_loses_all_data(private_server):
    port = private_server.port
    with connect(private_server) as connection:
        r.db_create("kept_nowhere").run(connection)
        r.db("kept_nowhere").table_create("t").run(connection)
        stale = connect(private_server)
    private_server.restart()
    assert private_server.port == port
    with pytest.raises(ReqlDriverError):
        r.expr(1).run(stale)
    stale.close(noreply_wait=False)
    with connect(private_server) as connection:
        assert r.db_list().run(connection) == ["test"]


def test_restart_after_kill_loses_all_data(private_server):
    with connect(private_server) as connection:
        r.db_create("gone").run(connection)
        stale = connect(private_server)
    private_server.restart(kill=True)
    with pytest.raises(ReqlDriverError):
        r.expr(1).run(stale)
    stale.close(noreply_wait=False)
    with connect(private_server) as connection:
        assert r.db_list().run(connection) == ["test"]


def test_paused_server_answers_nothing_until_resumed(private_server):
    connection = connect(private_server)
    private_server.pause()
    try:
        with pytest.raises(ReqlTimeoutError):  # a paused server accepts no handshake either
            connect(private_server, timeout=0.3)
        answer = {}
        worker = threading.Thread(target=lambda: answer.update(v=r.expr(7).run(connection)))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and answer == {}
    finally:
        private_server.resume()
    worker.join(FEED_WAIT)
    assert answer == {"v": 7}
    connection.close(noreply_wait=False)


# --- misc ------------------------------------------------------------------------------


def test_noreply_and_noreply_wait(conn, table):
    for i in range(10):
        table.insert({"id": i}).run(conn, noreply=True)
    r.error("ignored").run(conn, noreply=True)  # errors of noreply queries are not sent
    conn.noreply_wait()
    assert table.count().run(conn) == 10


def test_unsupported_terms_are_compile_errors(conn):
    with pytest.raises(ReqlServerCompileError, match="not supported by the rethinkdb_wire"):
        r.js("1").run(conn)
    assert r.expr("ok").run(conn) == "ok"
