"""Where the election lives when ``leaderfeed_backend`` is not set.

The broker if it is Redis, else ``result_backend`` if it names a store leaderfeed supports, else
a configuration error; the choice is logged once at INFO with the password hidden. The last
test runs a real ``celery worker`` on a RabbitMQ broker with a ``db+postgresql://`` result
backend and no ``leaderfeed_backend``: it must elect itself in PostgreSQL.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from celery import Celery

from celery_leaderfeed import ConfigurationError
from celery_leaderfeed.backends import backend_from_url
from celery_leaderfeed.celery import settings as settings_module
from celery_leaderfeed.celery.settings import resolve_settings
from harness.helpers import wait_until
from tests.celery_runs import Runs, lines_matching, log_line

SECRET = "hunter2-secret"


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the one-time INFO line as a new process would."""
    monkeypatch.setattr(settings_module, "_announced", set())


def app_with(**conf: Any) -> Celery:
    app = Celery("default_backend_app", set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(
    "result_backend",
    [
        f"db+postgresql://u:{SECRET}@db.example/app",
        f"db+postgresql+psycopg2://u:{SECRET}@db.example/app",
        f"postgresql://u:{SECRET}@db.example/app",
        f"redis://:{SECRET}@cache.example:6379/1",
        f"mongodb://u:{SECRET}@mongo.example/app",
    ],
)
def test_a_supported_result_backend_is_used_and_announced_once(
    result_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with(broker_url="amqp://guest@rabbit.example//", result_backend=result_backend)
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed"):
        assert resolve_settings(app).backend_url == result_backend
        assert resolve_settings(app).backend_url == result_backend
    announced = [
        r.getMessage() for r in caplog.records if "leaderfeed_backend is not set" in r.getMessage()
    ]
    assert len(announced) == 1
    assert "result_backend" in announced[0] and "***" in announced[0]
    assert SECRET not in caplog.text


def test_a_redis_broker_still_comes_first(caplog: pytest.LogCaptureFixture) -> None:
    broker = f"redis://:{SECRET}@broker.example:6379/0"
    app = app_with(broker_url=broker, result_backend="db+postgresql://u@db.example/app")
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed"):
        assert resolve_settings(app).backend_url == broker
    assert "the broker is Redis" in caplog.text and SECRET not in caplog.text


def test_an_explicit_leaderfeed_backend_wins_without_a_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = app_with(
        broker_url="amqp://",
        result_backend="redis://cache.example/1",
        leaderfeed_backend="postgresql://db.example/app",
    )
    with caplog.at_level(logging.INFO, logger="celery_leaderfeed"):
        assert resolve_settings(app).backend_url == "postgresql://db.example/app"
    assert "leaderfeed_backend is not set" not in caplog.text


@pytest.mark.parametrize(
    "result_backend",
    [None, "rpc://", "django-db", "db+sqlite:///results.db", "db+mysql://u@h/d", "memory://x"],
)
def test_no_usable_store_is_still_a_configuration_error(result_backend: str | None) -> None:
    app = app_with(broker_url="amqp://guest@rabbit.example//", result_backend=result_backend)
    with pytest.raises(ConfigurationError, match="set leaderfeed_backend to a redis://"):
        resolve_settings(app)


# -- a real worker on RabbitMQ, its election in PostgreSQL -----------------------------------------


def test_a_worker_on_rabbitmq_elects_itself_in_the_result_backends_postgresql(
    runs: Runs, rabbitmq_url: str, postgres_url: str
) -> None:
    result_backend = "db+" + postgres_url.replace("postgres@", f"postgres:{SECRET}@", 1)
    conf = {
        "broker_url": rabbitmq_url,
        "result_backend": result_backend,
        "task_ignore_result": True,
        "leaderfeed_name": runs.name,
        "task_default_queue": runs.name,
        "leaderfeed_heartbeat_interval": 0.2,
        "leaderfeed_election_timeout_min": 0.6,
        "leaderfeed_election_timeout_max": 0.9,
    }
    # -q: the start-up banner shows the result backend, and building Celery's database result
    # backend needs SQLAlchemy, which the test extra does not install; nothing else here uses it
    # (task_ignore_result). Leaderfeed itself reads the URL only.
    worker = runs.start(["-q", *runs.worker()], conf, ready="ready.")
    worker.wait_ready(60)
    wait_until(lambda: "consuming the leader queue" in worker.log(), 20, message="the worker leads")
    store = backend_from_url(result_backend, name=runs.name)
    try:
        store.connect()
        record = store.read().record
    finally:
        store.close()
    assert record is not None and record.holder == f"{runs.name}@localhost"
    output = worker.log()
    chosen = lines_matching(
        output,
        log_line("INFO", "leaderfeed: leaderfeed_backend is not set; using ")
        + r"db\+postgresql://postgres:\*\*\*@.*",
    )
    assert len(chosen) == 1, output[-3000:]
    assert SECRET not in output
    assert not re.search(r"Traceback|ERROR", output), output[-3000:]
