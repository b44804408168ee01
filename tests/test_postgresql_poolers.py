"""PostgreSQL behind a real PgBouncer (Debian's ``pgbouncer``), as a user meets it through
``celery worker``: ``fast_failover`` is refused behind transaction pooling with one line that
says why, works behind session pooling; statement pooling is refused with the fix.

PgBouncer runs in front of the session PostgreSQL server on a port of its own; each worker
reads its settings from the environment (``tests/celery_apps/config_app.py``) and the test
reads what it printed. The URL carries a password (the servers trust loopback and ignore it)
that must never be printed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from celery_leaderfeed.backends import backend_from_url
from harness.helpers import wait_until
from harness.servers.pgbouncer_process import PgBouncer
from harness.servers.postgres_process import PostgresServer
from tests.celery_runs import Runs, log_line
from tests.fixtures.postgresql_kit import TEST_PASSWORD, with_password

pytestmark = pytest.mark.celery_workers


@pytest.fixture
def bouncer(request: pytest.FixtureRequest, postgres_server: PostgresServer) -> Iterator[str]:
    """A database on the session server, through PgBouncer in ``request.param`` mode: its URL."""
    database = postgres_server.create_database("lf_pool")
    pool = PgBouncer(postgres_server.port, request.param).start()
    try:
        yield with_password(pool.url(database))
    finally:
        pool.close()


def settings(runs: Runs, url: str) -> dict[str, Any]:
    return {
        "broker_url": "memory://",
        "leaderfeed_backend": url,
        "leaderfeed_backend_options": {"fast_failover": True},
        "leaderfeed_name": runs.name,
        "leaderfeed_heartbeat_interval": 0.2,
        "leaderfeed_election_timeout_min": 0.6,
        "leaderfeed_election_timeout_max": 0.9,
    }


def about_the_store(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r"ERROR|CRITICAL", line)]


@pytest.mark.parametrize("bouncer", ["transaction"], indirect=True)
def test_fast_failover_behind_transaction_pooling_is_refused_in_one_line(
    runs: Runs, bouncer: str
) -> None:
    worker = runs.start(runs.worker(), settings(runs, bouncer), ready="ready.").wait_ready(30)
    refusal = "needs a database session of its own"
    wait_until(lambda: refusal in worker.log(), 15, interval=0.05, message="the refusal")
    output = worker.log()
    errors = about_the_store(output)
    assert len(errors) == 1, output
    assert re.fullmatch(
        log_line("ERROR", f"leaderfeed '{runs.name}': cannot start: fast_failover on ")
        + r"postgresql://postgres:\*\*\*@127\.0\.0\.1:\d+/lf_pool_\w+ "
        + re.escape(refusal)
        + r".* a transaction-pooling proxy \(PgBouncer pool_mode=transaction or statement\) "
        r"is in between.*turn fast_failover off",
        errors[0],
    ), output
    assert TEST_PASSWORD not in output
    # Refused, so this worker never joined: the record names nobody it wrote.
    store = backend_from_url(bouncer, name=runs.name, timeout=2.0)
    store.connect()
    try:
        record = store.read().record
        assert record is None or record.holder != f"{runs.name}@localhost"
    finally:
        store.close()


@pytest.mark.parametrize("bouncer", ["session"], indirect=True)
def test_fast_failover_behind_session_pooling_leads(runs: Runs, bouncer: str) -> None:
    worker = runs.start(runs.worker(), settings(runs, bouncer), ready="ready.").wait_ready(30)
    wait_until(lambda: "became leader" in worker.log(), 15, interval=0.05, message="leadership")
    assert about_the_store(worker.log()) == [], worker.log()


@pytest.mark.parametrize("bouncer", ["statement"], indirect=True)
def test_statement_pooling_is_refused_with_the_fix(runs: Runs, bouncer: str) -> None:
    conf = {**settings(runs, bouncer), "leaderfeed_backend_options": {}}
    worker = runs.start(runs.worker(), conf, ready="ready.").wait_ready(30)
    wait_until(
        lambda: "statement-pooling proxy" in worker.log(), 15, interval=0.05, message="refusal"
    )
    output = worker.log()
    refusals = [line for line in output.splitlines() if "statement-pooling proxy" in line]
    assert len(refusals) == 1, output
    assert "connect directly or through session or transaction pooling" in refusals[0]
    assert TEST_PASSWORD not in output
