"""Settings as a Celery app sees them: resolution order, validation, ``install`` and secrets."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.worker.control import conf as inspect_conf

import celery_leaderfeed
from celery_leaderfeed.bootstep import LeaderFeedStep
from celery_leaderfeed.errors import ConfigurationError
from celery_leaderfeed.settings import resolve_settings

SECRET = "PASSWORD-abc123"


def new_app(**conf: Any) -> Celery:
    app = Celery(
        "proj", broker=conf.pop("broker", "redis://localhost:6379/2"), set_as_current=False
    )
    app.conf.update(conf)
    return app


def test_the_redis_broker_and_the_app_name_are_the_defaults() -> None:
    app = new_app(broker="amqp://guest@rabbit//;redis://:pw@cache:6380/1")  # a failover list
    celery_leaderfeed.install(app)
    settings = resolve_settings(app)
    assert settings.backend_url == "redis://:pw@cache:6380/1"
    assert settings.name == "proj"
    assert settings.beat_name == "proj.beat"
    timing = settings.timing
    assert (timing.heartbeat_interval, timing.election_timeout_min) == (1.0, 3.0)
    assert (timing.election_timeout_max, timing.operation_timeout) == (4.0, 1.0)
    assert (settings.follower_policy, settings.retry_delay) == ("skip", 4.0)


def test_a_broker_other_than_redis_needs_leaderfeed_backend() -> None:
    with pytest.raises(ConfigurationError, match="leaderfeed_backend is not set"):
        resolve_settings(new_app(broker="amqp://guest@rabbit//"))
    app = new_app(broker="amqp://guest@rabbit//", leaderfeed_backend="mongodb://db/app")
    assert resolve_settings(app).backend_url == "mongodb://db/app"


def test_explicit_values_win_over_the_configuration() -> None:
    app = new_app(leaderfeed_name="from-conf", leaderfeed_heartbeat_interval=0.5)
    settings = resolve_settings(app, {"leaderfeed_name": "from-cli", "leaderfeed_backend": None})
    assert settings.name == "from-cli"
    assert settings.timing.heartbeat_interval == 0.5
    assert settings.backend_url == "redis://localhost:6379/2"  # None means "not given"


@pytest.mark.parametrize("install_first", [True, False])
@pytest.mark.parametrize("namespace", [None, "CELERY"])
def test_settings_from_a_config_object_are_read(install_first: bool, namespace: str | None) -> None:
    values = {
        "broker_url": "redis://localhost:6379/3",
        "leaderfeed_name": "billing",
        "leaderfeed_heartbeat_interval": 0.5,
        "leaderfeed_follower_policy": "raise",
    }
    if namespace:  # Django style: CELERY_LEADERFEED_NAME...
        values = {f"{namespace}_{key.upper()}": value for key, value in values.items()}
    config = SimpleNamespace(**values)
    app = Celery("proj", set_as_current=False)
    if install_first:
        celery_leaderfeed.install(app)
    app.config_from_object(config, namespace=namespace)  # e.g. Django's settings
    if not install_first:
        celery_leaderfeed.install(app)
    settings = resolve_settings(app)
    assert (settings.name, settings.follower_policy) == ("billing", "raise")
    assert settings.timing.heartbeat_interval == 0.5
    assert settings.backend_url == "redis://localhost:6379/3"


BAD = [
    ({"leaderfeed_heartbeat_interval": "fast"}, "leaderfeed_heartbeat_interval"),
    ({"leaderfeed_heartbeat_interval": 0}, "leaderfeed_heartbeat_interval"),
    ({"leaderfeed_election_timeout_max": 2.0}, "election_timeout_max"),
    ({"leaderfeed_follower_policy": "ignore"}, "leaderfeed_follower_policy"),
    ({"leaderfeed_retry_delay": -1}, "leaderfeed_retry_delay"),
    ({"leaderfeed_backend": f"redsi://:{SECRET}@host/0"}, "redsi://"),
    ({"leaderfeed_backend": 42}, "URL"),
    ({"leaderfeed_backend_options": ["not", "a", "mapping"]}, "leaderfeed_backend_options"),
    ({"leaderfeed_catch_up_limit": 0}, "leaderfeed_catch_up_limit"),
]


@pytest.mark.parametrize(("conf", "named"), BAD, ids=[named for _, named in BAD])
def test_bad_settings_are_one_line_that_names_them(conf: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_settings(new_app(**conf))
    message = str(caught.value)
    assert named in message
    assert "\n" not in message
    assert SECRET not in message


def test_install_is_idempotent_and_adds_everything() -> None:
    app = new_app()
    celery_leaderfeed.install(app)
    options = {option.name for option in app.user_options["worker"]}
    count = len(app.user_options["worker"])
    celery_leaderfeed.install(app)
    celery_leaderfeed.install(app)
    assert len(app.user_options["worker"]) == count
    assert options == {
        "leaderfeed_backend",
        "leaderfeed_name",
        "leaderfeed_heartbeat_interval",
        "leaderfeed_election_timeout_min",
        "leaderfeed_election_timeout_max",
        "leaderfeed_operation_timeout",
        "leaderfeed_follower_policy",
        "leaderfeed_retry_delay",
    }
    assert LeaderFeedStep in app.steps["worker"]
    assert resolve_settings(app).follower_policy == "skip"  # defaults come from resolve_settings


def test_a_plain_app_is_left_alone_until_installed() -> None:
    app = new_app()
    assert not app.steps["worker"]
    assert not app.user_options["worker"]
    assert "leaderfeed_follower_policy" not in app.conf


def test_inspect_conf_and_report_hide_the_store_password() -> None:
    app = new_app(
        broker=f"redis://:{SECRET}@localhost:6379/0",
        leaderfeed_backend=f"redis://:{SECRET}@localhost:6379/1",
        leaderfeed_backend_options={"password": SECRET},
    )
    celery_leaderfeed.install(app)
    shown = json.dumps(inspect_conf(SimpleNamespace(app=app)))  # what `celery inspect conf` sends
    assert SECRET not in shown
    assert '"leaderfeed_backend": "redis://:********@localhost:6379/1"' in shown
    assert '"password": "********"' in shown  # inside leaderfeed_backend_options
    assert SECRET not in app.bugreport()  # `celery report`
