"""Session-wide test set-up.

pytest-celery's own plugin needs Docker, which these machines do not have; it is disabled with
``-p no:celery`` (see pyproject.toml) and Celery's classic fixtures are loaded instead.
Servers are started by the fixture modules below when no URL is given in the environment.
"""

from __future__ import annotations

import pytest

from tests.kits import BACKEND_IDS, SERVER_BACKEND_IDS, BackendKit, FaultServer, fixture_name

pytest_plugins = (
    "celery.contrib.pytest",
    "tests.beat_support",
    "tests.celery_runs",
    "tests.fixtures.memory_store",
    "tests.fixtures.redis_server",
    "tests.fixtures.rabbitmq_server",
    "tests.fixtures.mongodb_server",
    "tests.fixtures.rethinkdb_server",
    "tests.fixtures.postgres_server",
    "tests.fixtures.postgresql_kit",
    "tests.fixtures.election_store",
)


@pytest.fixture(params=BACKEND_IDS)
def kit(request: pytest.FixtureRequest) -> BackendKit:
    """Every backend in turn (the contract suite's parameter)."""
    return request.getfixturevalue(fixture_name(request.param, "kit"))  # type: ignore[no-any-return]


@pytest.fixture(params=SERVER_BACKEND_IDS)
def fault_server(request: pytest.FixtureRequest) -> FaultServer:
    """A private, breakable server of every backend in turn (the fault suite's parameter)."""
    return request.getfixturevalue(fixture_name(request.param, "fault_server"))  # type: ignore[no-any-return]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No test may be skipped: every backend and every server is meant to run here.

    A skipped test would let CI pass without, say, the Redis suites having run.
    """
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == 0:
        reporter.write_line(f"FAILED: {skipped} test(s) were skipped; none may be", red=True)
        session.exitstatus = 1
