"""What is particular to the PostgreSQL backend; the shared suites cover the rest.

Most tests run on ``postgresql_kit`` (a table of the test's own on the session server); the
restart test starts a private server.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg import sql

from celery_leaderfeed import BackendUnavailable, ConfigurationError, LeaderFeed, StoreRefused
from celery_leaderfeed.backends import backend_class, backend_from_url
from celery_leaderfeed.backends.base import Backend, FeedEvent, RecordChanged, Subscription
from celery_leaderfeed.backends.postgresql import PostgresBackend, libpq_url
from celery_leaderfeed.record import MISSING_VERSION, LeaderRecord
from harness.fault_checker import tenures
from harness.helpers import closed_port_url, wait_until
from harness.servers.postgres_process import PostgresServer
from tests import test_password_masking as masking
from tests.faults.cluster import HEARTBEAT, HIGH, LOW, SLACK, MemberCluster
from tests.fixtures.postgresql_kit import TEST_PASSWORD, PostgresFaultServer, with_password
from tests.kits import BackendKit

DEADLINE = 5.0


@pytest.fixture
def admin(postgresql_kit: BackendKit) -> Iterator[psycopg.Connection[Any]]:
    """A connection of our own to the kit's database, for acting behind the backend's back."""
    conn = psycopg.connect(libpq_url(postgresql_kit.url), autocommit=True)
    yield conn
    conn.close()


def claim(backend: Backend, holder: str = "a", token: str = "tok-a") -> LeaderRecord:
    result = backend.claim(MISSING_VERSION, holder, token, min_term=1, min_version=1)
    assert result.ok, result
    assert result.observation.record is not None
    return result.observation.record


def drain(subscription: Subscription, seconds: float) -> list[FeedEvent]:
    """Everything the feed delivers within ``seconds``."""
    events: list[FeedEvent] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        events += subscription.poll(min(left, 0.1))
    return events


def versions(events: list[FeedEvent]) -> list[int]:
    return [
        e.observation.record.version
        for e in events
        if isinstance(e, RecordChanged) and e.observation.record is not None
    ]


def pg(backend: Backend) -> PostgresBackend:
    assert isinstance(backend, PostgresBackend)
    return backend


# -- URLs and options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme", ["postgresql", "postgres", "db+postgresql", "db+postgresql+psycopg2"]
)
def test_every_url_spelling_reaches_the_store(postgresql_kit: BackendKit, scheme: str) -> None:
    url = scheme + "://" + postgresql_kit.url.partition("://")[2]
    assert backend_class(url) is PostgresBackend
    backend = backend_from_url(url, name=postgresql_kit.name, options=postgresql_kit.options)
    try:
        backend.connect()
        backend.create()
        assert claim(backend).holder == "a"
    finally:
        backend.close()
    assert libpq_url(url).startswith(("postgresql://", "postgres://"))


def test_schema_and_table_options_place_the_tables(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    schema = f"lf_schema_{uuid.uuid4().hex[:8]}"
    options = {"schema": schema, "table": "elections"}
    backend = backend_from_url(postgresql_kit.url, name="billing", options=options)
    try:
        backend.connect()
        backend.create()
        record = claim(backend)
        row = admin.execute(
            sql.SQL("SELECT holder, term FROM {} WHERE name = 'billing'").format(
                sql.Identifier(schema, "elections")
            )
        ).fetchone()
        assert row == ("a", record.term)
        assert backend.write_entry(record.term, "tok-a", "job", None, "v1")
        entries = admin.execute(
            sql.SQL("SELECT entry, state FROM {}").format(
                sql.Identifier(schema, "elections_schedule")
            )
        ).fetchall()
        assert entries == [("job", "v1")]
    finally:
        backend.close()
        admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"table": "Leaderfeed"}, "'table'"),
        ({"table": "lf; DROP TABLE users"}, "'table'"),
        ({"table": "1st"}, "'table'"),
        ({"table": "x" * 55}, "'table'"),
        ({"table": ""}, "'table'"),
        ({"schema": 'a"b'}, "'schema'"),
        ({"schema": 5}, "'schema'"),
        ({"tabel": "x"}, "tabel"),
    ],
)
def test_bad_identifiers_are_refused_with_one_clear_error(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        PostgresBackend("postgresql://localhost/db", options=options)
    message = str(raised.value)
    assert named in message
    assert "\n" not in message


def test_a_table_with_another_layout_is_a_configuration_error_naming_it(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    table = postgresql_kit.options["table"]
    admin.execute(sql.SQL("CREATE TABLE {} (id int, payload text)").format(sql.Identifier(table)))
    backend = postgresql_kit.backend()
    backend.connect()
    with pytest.raises(ConfigurationError, match=f"public.{table} .*another layout"):
        backend.create()


def test_a_malformed_url_is_a_configuration_error_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        PostgresBackend("postgresql://u:hunter2-secret@host:notaport/db")
    assert "hunter2-secret" not in str(raised.value)


# -- transactions and notifications ------------------------------------------------------------


def test_notifications_are_sent_only_at_commit(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    """The claim's statement run inside a transaction we control: its pg_notify is delivered
    when that transaction commits, never before and never if it rolls back."""
    backend = pg(postgresql_kit.connected())
    subscription = backend.subscribe()
    params = {
        "name": backend.name,
        "channel": backend.channel,
        "expected": MISSING_VERSION,
        "holder": "tx",
        "token": "tok-tx",
        "min_term": 1,
        "min_version": 1,
    }
    try:
        with psycopg.connect(libpq_url(postgresql_kit.url)) as conn:  # not autocommit
            assert conn.execute(backend.statements.claim, params).fetchone()
            assert drain(subscription, 0.3) == []
            conn.rollback()
            assert drain(subscription, 0.3) == []
            assert backend.read().record is None

            written = conn.execute(backend.statements.claim, params).fetchone()
            assert written is not None and written[10]  # written, not yet committed
            assert drain(subscription, 0.3) == []
            conn.commit()
            events = wait_until(lambda: drain(subscription, 0.1), DEADLINE, message="notified")
        assert [e.observation.leader_id for e in events if isinstance(e, RecordChanged)] == ["tx"]
    finally:
        subscription.close()


def test_a_failed_compare_sends_no_notification(postgresql_kit: BackendKit) -> None:
    backend = postgresql_kit.connected()
    record = claim(backend)
    subscription = backend.subscribe()
    try:
        assert not backend.renew(record.term, "someone else").ok
        assert not backend.claim(MISSING_VERSION, "b", "tok-b", min_term=1, min_version=1).ok
        assert backend.renew(record.term, "tok-a").ok
        events = wait_until(lambda: drain(subscription, 0.2), DEADLINE, message="the renewal")
        assert versions(events) == [record.version + 1]
    finally:
        subscription.close()


def test_a_fenced_write_waits_for_a_claim_in_progress_and_then_refuses(
    postgresql_kit: BackendKit,
) -> None:
    """READ COMMITTED: the claim that replaces the term holds the row; the schedule write
    locks it FOR SHARE, waits, re-reads it at its newest version and finds the term gone."""
    backend = pg(postgresql_kit.connected())
    record = claim(backend)
    params = {
        "name": backend.name,
        "channel": backend.channel,
        "expected": record.version,
        "holder": "b",
        "token": "tok-b",
        "min_term": 1,
        "min_version": 1,
    }
    outcome: list[bool] = []
    with psycopg.connect(libpq_url(postgresql_kit.url)) as conn:  # not autocommit
        conn.execute(backend.statements.claim, params)  # holds the row until commit
        writer = threading.Thread(
            target=lambda: outcome.append(
                backend.write_entry(record.term, "tok-a", "job", None, "stale")
            )
        )
        writer.start()
        writer.join(0.3)
        assert writer.is_alive(), "the fenced write did not wait for the claim in progress"
        conn.commit()
    writer.join(DEADLINE)
    assert outcome == [False]
    assert backend.read_entries() == {}


def test_claims_racing_fenced_writes_never_let_an_old_term_write(
    postgresql_kit: BackendKit,
) -> None:
    """1,000 fenced writes against a connection that keeps claiming: no deadlock, no error,
    old terms refused. (The ordering itself is proven by the test above: a race cannot show
    from outside whether a write committed before or after a claim.)"""
    claimer, writer = postgresql_kit.connected(), postgresql_kit.connected()
    first = claim(claimer, "c", "tok-0")
    stop = threading.Event()

    def keep_claiming() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            seen = claimer.read()
            claimer.claim(seen.version, "c", f"tok-{index}", min_term=1, min_version=1)

    thread = threading.Thread(target=keep_claiming)
    thread.start()
    accepted = 0
    try:
        for iteration in range(1000):
            record = writer.read().record
            assert record is not None and record.token is not None
            entry = f"e{iteration % 5}"
            stored = writer.read_entries().get(entry)
            new = f"{record.term}:{iteration}"
            if writer.write_entry(record.term, record.token, entry, stored, new):
                accepted += 1
                # The term it named still held the record when it committed, so no claim
                # committed in between: the term in the record now is that or a later one.
                now = writer.read().record
                assert now is not None and now.term >= record.term
    finally:
        stop.set()
        thread.join(DEADLINE)
    assert accepted > 0
    final = claimer.read().record
    assert final is not None and final.term > first.term


# -- the store goes back in time -----------------------------------------------------------------


@pytest.fixture
def private_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.close()


def test_a_restarted_server_makes_the_record_suspect(private_server: PostgresServer) -> None:
    """A restart (here an immediate stop, a crash: with synchronous_commit=off the last commits
    may be lost) changes the history marker: only a claim may replace the record then."""
    url = with_password(private_server.url())
    backend = backend_from_url(url, name="restarted", timeout=2)
    try:
        backend.connect()
        backend.create()
        record = claim(backend)
        assert backend.write_entry(record.term, "tok-a", "job", None, "v1")
        assert not backend.read().suspect
        # The server runs with synchronous_commit=off, so an immediate stop loses the last
        # ~0.2 s of commits (a real rollback); a checkpoint keeps the record for this test.
        with psycopg.connect(private_server.url(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        private_server.restart()
        found = wait_until(lambda: _read_or_none(backend), DEADLINE * 2, message="the server back")
        assert found.suspect and found.record == record
        assert not backend.renew(record.term, "tok-a").ok
        assert not backend.resign(record.term, "tok-a").ok
        assert not backend.nominate(record.version, "b").ok
        assert not backend.write_entry(record.term, "tok-a", "job", "v1", "v2")
        result = backend.claim(record.version, "b", "tok-b", min_term=1, min_version=1)
        assert result.ok and result.over_suspect
        replaced = result.observation.record
        assert replaced is not None and result.observation.store_time is not None
        assert replaced.term >= int(result.observation.store_time * 1000)
        assert not backend.read().suspect
        assert backend.renew(replaced.term, "tok-b").ok
    finally:
        backend.close()


def _read_or_none(backend: Backend) -> Any:
    try:
        return backend.read()
    except BackendUnavailable:
        return None


# -- foreign rows, lost tables -----------------------------------------------------------------


def test_a_foreign_row_is_ignored_with_one_warning(
    postgresql_kit: BackendKit, caplog: pytest.LogCaptureFixture
) -> None:
    backend = postgresql_kit.connected()
    postgresql_kit.corrupt(postgresql_kit.name)
    with caplog.at_level(logging.WARNING, logger="celery_leaderfeed"):
        assert backend.read().corrupt
        assert backend.read().corrupt
        assert not backend.renew(1, "tok").ok
    warnings = [r for r in caplog.records if "not a leaderfeed record" in r.getMessage()]
    assert len(warnings) == 1


def test_a_table_truncated_under_a_running_election_is_claimed_again(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    feeds = [
        LeaderFeed(
            postgresql_kit.backend(),
            member_id=f"member-{index}",
            heartbeat_interval=0.1,
            election_timeout_min=0.4,
            election_timeout_max=0.6,
        )
        for index in range(2)
    ]
    try:
        for feed in feeds:
            feed.start()
        first = wait_until(lambda: [f for f in feeds if f.is_leader], DEADLINE)[0]
        term = first.term
        assert term is not None
        table = sql.Identifier(postgresql_kit.options["table"])
        admin.execute(sql.SQL("TRUNCATE {}").format(table))
        leader = wait_until(
            lambda: [f for f in feeds if f.is_leader and (f.term or 0) > term],
            DEADLINE,
            message="a leader on a new term",
        )
        assert len(leader) == 1
    finally:
        for feed in feeds:
            feed.stop()


def test_a_dropped_table_is_made_again(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    backend = postgresql_kit.connected()
    claim(backend)
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(postgresql_kit.options["table"])))
    assert backend.read().record is None
    assert claim(backend, "b", "tok-b").holder == "b"


# -- errors and secrets --------------------------------------------------------------------------


def test_a_missing_database_is_refused_naming_host_and_database(
    postgres_server: PostgresServer,
) -> None:
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{postgres_server.port}/no_such_db"
    backend = backend_from_url(url, name="x", timeout=1)
    with pytest.raises(StoreRefused) as raised:
        backend.connect()
    message = str(raised.value)
    assert "no_such_db" in message and "127.0.0.1" in message
    assert "hunter2-secret" not in message and "hunter2-secret" not in repr(backend)


def test_a_wrong_password_is_refused_without_showing_it(tmp_path: Any) -> None:
    """A server that checks passwords (scram), unlike the session server, which trusts."""
    server = PostgresServer(settings={"password_encryption": "scram-sha-256"}).start()
    try:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("CREATE ROLE member LOGIN PASSWORD 'right-one'")
        hba = server.data / "pg_hba.conf"
        hba.write_text("host all member 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        url = f"postgresql://member:{TEST_PASSWORD}-wrong@127.0.0.1:{server.port}/postgres"
        backend = backend_from_url(url, name="x", timeout=1)
        with pytest.raises(StoreRefused) as raised:
            backend.connect()
        message = str(raised.value)
        assert "refused user 'member'" in message and "postgres" in message
        assert TEST_PASSWORD not in message
        assert TEST_PASSWORD not in repr(raised.value.__cause__ or "")
    finally:
        server.close()


def test_an_unreachable_server_is_unavailable_without_the_password() -> None:
    url = closed_port_url("postgresql").replace("://", "://u:hunter2-secret@") + "/db"
    backend = backend_from_url(url, name="x", timeout=0.5)
    with pytest.raises(BackendUnavailable) as raised:
        backend.connect()
    assert "hunter2-secret" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


def test_a_lost_listen_connection_makes_poll_raise(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    backend = postgresql_kit.connected()
    subscription = backend.subscribe()
    try:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND query ILIKE 'LISTEN%%'"
        )
        with pytest.raises(BackendUnavailable):
            wait_until(lambda: drain(subscription, 0.2) and False, DEADLINE)
    finally:
        subscription.close()


@pytest.mark.parametrize("scheme", ["postgresql", "db+postgresql"])
def test_every_url_form_hides_the_password(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    """The password-masking suite's URL forms and passwords, on this backend's schemes: its
    repr, its configuration errors, its mapped driver errors and Celery's settings tables."""
    monkeypatch.setitem(masking.LOCATIONS, scheme, ("127.0.0.1:9", "/lfdb"))
    for password in masking.PASSWORDS.values():
        for form, url in masking.url_forms(scheme, password).items():
            shown = {**masking.through_backend(url, password), **masking.through_settings(url)}
            with contextlib.suppress(ConfigurationError):
                backend = backend_from_url(url, name="masking", timeout=0.05)
                said = f"cannot use {url} (password {password!r})"
                for error in (psycopg.OperationalError(said), psycopg.errors.InvalidPassword(said)):
                    try:
                        with backend.mapped_errors("connect"):
                            raise error
                    except BackendUnavailable as mapped:
                        shown[f"mapped {type(error).__name__}"] = masking.traceback_of(mapped)
            masking.assert_hidden(password, **{f"{form}: {k}": v for k, v in shown.items()})


def test_a_standby_promoted_while_behind_serves_a_suspect_record(
    private_server: PostgresServer,
) -> None:
    """Replication cut, the primary renews on and dies, the standby is promoted:
    it holds an older record, stamped with the primary's history, so it is suspect there -
    nobody may renew it, and the claim that replaces it is acted on one election timeout later.
    """
    primary = private_server
    on_primary = backend_from_url(primary.url(), name="promoted", timeout=2)
    standby = PostgresServer()
    try:
        on_primary.connect()
        on_primary.create()
        record = claim(on_primary)
        standby.stop()
        shutil.rmtree(standby.data)
        standby.run_tool(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", str(standby.data), "-R", "-X", "stream",
        )  # fmt: skip
        standby.start()
        on_standby = backend_from_url(standby.url(), name="promoted", timeout=2)
        on_standby.connect()
        wait_until(lambda: on_standby.read().record == record, DEADLINE, message="replicated")
        # Cut replication (promotion would replay whatever WAL had been received, paused or not).
        with psycopg.connect(standby.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
            conn.execute("SELECT pg_reload_conf()")
            wait_until(
                lambda: not conn.execute("SELECT 1 FROM pg_stat_wal_receiver").fetchone(),
                DEADLINE,
                message="the WAL receiver gone",
            )
        renewed = on_primary.renew(record.term, "tok-a").observation.record
        assert renewed is not None and renewed.version == record.version + 1
        primary.stop()
        standby.run_tool("pg_ctl", "-D", str(standby.data), "-w", "promote")
        found = wait_until(lambda: _read_or_none(on_standby), DEADLINE, message="promoted")
        assert found.record == record  # behind: the renewal never reached it
        assert found.suspect
        assert not on_standby.renew(record.term, "tok-a").ok
        result = on_standby.claim(record.version, "b", "tok-b", min_term=1, min_version=1)
        assert result.ok and result.over_suspect
        assert result.observation.record is not None
        assert result.observation.record.term > renewed.term
        on_standby.close()
    finally:
        on_primary.close()
        standby.close()


# -- member processes on a private server, with the fault suite's checker --------------------------


@pytest.fixture
def cluster(
    postgresql_fault_server: PostgresFaultServer, tmp_path: Path
) -> Iterator[MemberCluster]:
    members = MemberCluster(postgresql_fault_server, tmp_path)
    yield members
    members.close()


def _started(cluster: MemberCluster) -> str:
    cluster.start_all()
    return cluster.leader(10.0)


def _assert_safe(cluster: MemberCluster) -> None:
    found = cluster.violations()
    assert not found, "\n".join(found) + "\n" + cluster.logs()


def test_terminating_the_leaders_sessions(
    cluster: MemberCluster, postgresql_fault_server: PostgresFaultServer
) -> None:
    """pg_terminate_backend of the leader's two sessions only (its renewals and its LISTEN):
    it reconnects; whoever leads next, no two members act at once."""
    leader = _started(cluster)
    ports = {
        conn.laddr.port
        for conn in psutil.Process(cluster.processes[leader].pid).net_connections("tcp")
        if conn.raddr and conn.raddr.port == postgresql_fault_server.server.port
    }
    assert len(ports) == 2, ports
    cut_at = time.monotonic()
    with psycopg.connect(postgresql_fault_server.server.url(), autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY(%s)",
            [sorted(ports)],
        ).fetchall()
    assert ended == [(True,), (True,)]
    cluster.wait_for_act_after(cut_at, LOW + HIGH + SLACK)
    cluster.run_for(2 * HIGH)
    _assert_safe(cluster)


def test_a_table_truncated_under_five_members(
    cluster: MemberCluster, postgresql_fault_server: PostgresFaultServer
) -> None:
    _started(cluster)
    cluster.run_for(HIGH)
    terms_before = {t.term for t in tenures(cluster.acts())}
    with psycopg.connect(postgresql_fault_server.server.url(), autocommit=True) as admin:
        admin.execute("TRUNCATE leaderfeed, leaderfeed_schedule")
    cut_at = time.monotonic()
    # The record is missing: members claim it at once and act LOW after the claim.
    wait_until(
        lambda: [a for a in cluster.acts() if a.at > cut_at and a.term > max(terms_before)],
        2 * HEARTBEAT + LOW + HIGH + SLACK,
        message="an act on a new term",
    )
    cluster.run_for(2 * HIGH)
    _assert_safe(cluster)


def test_the_registry_serves_exactly_the_backends_schemes() -> None:
    from celery_leaderfeed.backends import _REGISTRY

    registered = {scheme for scheme, entry in _REGISTRY.items() if "postgresql" in entry.target}
    assert registered == set(PostgresBackend.schemes)
    assert all(backend_class(f"{scheme}://h/d") is PostgresBackend for scheme in registered)


# -- once-only marks ---------------------------------------------------------------------------


def test_expired_marks_are_swept_a_bounded_number_at_a_time(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_leaderfeed.backends.postgresql import backend as postgres_module

    backend = postgresql_kit.connected()
    other = postgresql_kit.connected(f"other-{uuid.uuid4().hex[:8]}")
    marks = sql.Identifier(f"{postgresql_kit.options['table']}_marks")
    for index in range(5):
        assert backend.mark_once(f"old-{index}", "v", 0.05) is None
    assert other.mark_once("old", "v", 0.05) is None  # any election's expired marks go
    assert backend.mark_once("kept", "v", 60) is None

    def count(where: str) -> int:
        query = sql.SQL("SELECT count(*) FROM {} WHERE " + where).format(marks)
        row = admin.execute(query).fetchone()
        assert row is not None
        return int(row[0])

    def expired() -> int:
        return count("expires_at <= clock_timestamp()")

    wait_until(lambda: expired() == 6, DEADLINE, message="six expired marks")
    monkeypatch.setattr(postgres_module, "MARK_SWEEP_LIMIT", 4)
    assert backend.mark_once("new-1", "v", 60) is None  # no sweep yet: not due
    assert expired() == 6
    backend._next_sweep = 0.0  # due now
    assert backend.mark_once("new-2", "v", 60) is None
    assert expired() == 2  # at most the limit
    backend._next_sweep = 0.0
    assert backend.mark_once("new-3", "v", 60) is None
    assert expired() == 0
    assert count("true") == 4  # kept, new-1, new-2, new-3
    assert backend.mark_once("kept", "x", 60) == "v"


def test_a_marks_table_of_another_layout_is_a_configuration_error(
    postgresql_kit: BackendKit, admin: psycopg.Connection[Any]
) -> None:
    marks = sql.Identifier(f"{postgresql_kit.options['table']}_marks")
    admin.execute(sql.SQL("CREATE TABLE {} (name text PRIMARY KEY, other int)").format(marks))
    backend = postgresql_kit.backend()
    backend.connect()
    with pytest.raises(ConfigurationError, match="_marks"):
        backend.create()


def test_a_mark_with_nul_is_a_value_error_not_an_outage(postgresql_kit: BackendKit) -> None:
    backend = postgresql_kit.connected()
    with pytest.raises(ValueError, match="NUL"):
        backend.mark_once("a\x00b", "v", 60)
    with pytest.raises(ValueError, match="NUL"):
        backend.mark_once("k", "v\x00", 60)
    assert backend.mark_once("k", "v", 60) is None
