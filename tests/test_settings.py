"""Settings as a Celery app sees them: resolution order, validation, ``install`` and secrets.

What a worker or beat process prints for a mistake is in ``test_bad_config.py``.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.worker.control import conf as inspect_conf

import celery_leaderfeed
from celery_leaderfeed import LeaderFeed, Timing
from celery_leaderfeed.celery.bootstep import LeaderFeedStep
from celery_leaderfeed.celery.settings import resolve_settings, unknown_settings
from celery_leaderfeed.errors import ConfigurationError

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
    # The default follower policy sends a leader-only message back to the leader queue.
    assert (settings.follower_policy, settings.retry_delay) == ("requeue", 4.0)
    assert settings.queue == "proj.leader"


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
    ({"leaderfeed_metrics_port": 70000}, "leaderfeed_metrics_port"),
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
        "leaderfeed_queue",
        "leaderfeed_metrics_port",
    }
    assert LeaderFeedStep in app.steps["worker"]
    assert getattr(app.amqp, "routes_leader_only", False)  # leader-only tasks: leader queue
    assert resolve_settings(app).follower_policy == "requeue"  # defaults: resolve_settings
    # beat takes those of them that mean something to a scheduler
    assert {option.name for option in app.user_options["beat"]} == options - {
        "leaderfeed_follower_policy",
        "leaderfeed_retry_delay",
        "leaderfeed_queue",
    }
    assert len(app.user_options["beat"]) == 7


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


# -- timings that cannot work -------------------------------------------------------------------

FAST = {"election_timeout_min": 0.06, "election_timeout_max": 0.09}


@pytest.mark.parametrize(
    ("timing", "named"),
    [
        pytest.param({"heartbeat_interval": 0.01}, "heartbeat_interval (0.01 s)", id="heartbeat"),
        pytest.param(
            {"heartbeat_interval": 0.02, "operation_timeout": 0.015},
            "operation_timeout (0.015 s)",
            id="operation-timeout",
        ),
    ],
)
def test_timings_below_a_store_round_trip_are_refused_by_the_engine(
    timing: dict[str, float], named: str
) -> None:
    expected = f"{named} must be at least 0.02 s: a store round trip"
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        Timing(**FAST, **timing)
    with pytest.raises(ConfigurationError, match=re.escape(expected)):
        LeaderFeed("memory://floor", **FAST, **timing)


def test_the_floor_itself_and_the_fastest_test_timings_are_accepted() -> None:
    floor = Timing(heartbeat_interval=0.02, **FAST)
    assert (floor.heartbeat_interval, floor.timeout) == (0.02, 0.02)
    Timing(heartbeat_interval=0.04, election_timeout_min=0.15, election_timeout_max=0.25)


def test_a_timing_error_names_the_setting_the_user_wrote() -> None:
    app = new_app(leaderfeed_operation_timeout=0.005)
    with pytest.raises(ConfigurationError) as caught:
        resolve_settings(app)
    assert str(caught.value).startswith("leaderfeed_operation_timeout (0.005 s) must be at least")


# -- settings no one reads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "key", "warning"),
    [
        pytest.param(
            None,
            "leaderfeed_hearbeat_interval",
            "unknown setting leaderfeed_hearbeat_interval; "
            "did you mean leaderfeed_heartbeat_interval?",
            id="typo",
        ),
        pytest.param(
            None,
            "LEADERFEED_BACKEND",  # Celery reads only lowercase names without a namespace
            "unknown setting LEADERFEED_BACKEND; did you mean leaderfeed_backend?",
            id="uppercase",
        ),
        pytest.param(
            "CELERY",
            "CELERY_LEADERFEED_ELECTION_TIMEOUT",
            "unknown setting CELERY_LEADERFEED_ELECTION_TIMEOUT; "
            "did you mean CELERY_LEADERFEED_ELECTION_TIMEOUT_MIN?",
            id="django-typo",
        ),
        pytest.param(
            "CELERY",
            "LEADERFEED_NAME",  # the namespace is missing
            "unknown setting LEADERFEED_NAME; did you mean CELERY_LEADERFEED_NAME?",
            id="django-without-namespace",
        ),
    ],
)
def test_a_key_no_setting_reads_is_named_with_the_closest_setting(
    namespace: str | None, key: str, warning: str
) -> None:
    known = {"leaderfeed_name": "billing", "leaderfeed_backend": "memory://x"}
    if namespace:
        known = {f"{namespace}_{setting.upper()}": value for setting, value in known.items()}
    app = Celery("proj", set_as_current=False)
    app.config_from_object(SimpleNamespace(**known, **{key: 1}), namespace=namespace)
    assert unknown_settings(app) == [warning]
    assert resolve_settings(app).name == "billing"  # the spelling suggested is the one read


def test_a_key_unlike_any_setting_lists_them_all() -> None:
    (warning,) = unknown_settings(new_app(leaderfeed_zzz=1))
    assert warning.startswith("unknown setting leaderfeed_zzz is ignored; the settings are ")
    assert "leaderfeed_heartbeat_interval, " in warning


def test_every_setting_and_unrelated_keys_pass_unremarked() -> None:
    app = new_app(
        leaderfeed_backend="memory://x",
        leaderfeed_backend_options={},
        leaderfeed_name="n",
        leaderfeed_heartbeat_interval=0.5,
        leaderfeed_election_timeout_min=1.5,
        leaderfeed_election_timeout_max=2.0,
        leaderfeed_operation_timeout=0.5,
        leaderfeed_follower_policy="skip",
        leaderfeed_retry_delay=1,
        leaderfeed_misfire_policy="skip",
        leaderfeed_catch_up_limit=3,
        leaderfeed_beat_name="b",
        beat_schedule={},
        feed_url="unrelated",
    )
    assert unknown_settings(app) == []


# -- stores other processes cannot see ----------------------------------------------------------


def test_only_memory_stores_are_private_to_a_process() -> None:
    assert not resolve_settings(new_app(leaderfeed_backend="memory://x")).shared_across_processes
    assert resolve_settings(new_app()).shared_across_processes  # the Redis broker
