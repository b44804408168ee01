"""The names users import keep working wherever the modules behind them live."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import pytest

import celery_leaderfeed


@pytest.mark.parametrize("name", celery_leaderfeed.__all__)
def test_every_public_name_is_importable_from_the_package(name: str) -> None:
    assert getattr(celery_leaderfeed, name) is not None


@pytest.mark.parametrize(
    ("public", "inner", "name"),
    [
        ("celery_leaderfeed.beat", "celery_leaderfeed.celery.scheduler", "LeaderScheduler"),
        ("celery_leaderfeed.signals", "celery_leaderfeed.celery.signals", "leadership_gained"),
        ("celery_leaderfeed.signals", "celery_leaderfeed.celery.signals", "leadership_lost"),
    ],
)
def test_documented_module_paths_name_the_objects_the_package_uses(
    public: str, inner: str, name: str
) -> None:
    shown = getattr(importlib.import_module(public), name)
    assert shown is getattr(importlib.import_module(inner), name)


@pytest.mark.parametrize(
    ("group", "name"),
    [
        ("celery.beat_schedulers", "leaderfeed"),
        ("celery.beat_schedulers", "leaderfeed-redbeat"),
        ("celery.commands", "leaderfeed"),
    ],
)
def test_entry_points_load(group: str, name: str) -> None:
    (point,) = [p for p in entry_points(group=group) if p.name == name]
    assert point.load() is not None


def test_the_django_alias_names_the_leader_gated_database_scheduler() -> None:
    """Loading it needs Django set up (tests/test_django_scheduler.py does); here, the name."""
    (point,) = [
        p for p in entry_points(group="celery.beat_schedulers") if p.name == "leaderfeed-django"
    ]
    assert point.value == "celery_leaderfeed.contrib.django_celery_beat:LeaderDatabaseScheduler"


def test_leader_gated_composes_with_any_scheduler_once() -> None:
    from celery.beat import PersistentScheduler, Scheduler

    from celery_leaderfeed.celery.leader_gated import LeaderGatedMixin
    from celery_leaderfeed.celery.scheduler import LeaderScheduler

    gated = celery_leaderfeed.leader_gated(PersistentScheduler)
    assert issubclass(gated, LeaderGatedMixin) and issubclass(gated, PersistentScheduler)
    assert gated.__mro__[1:3] == (LeaderGatedMixin, PersistentScheduler)
    assert celery_leaderfeed.leader_gated(PersistentScheduler) is gated
    assert celery_leaderfeed.leader_gated(LeaderScheduler) is LeaderScheduler
    assert issubclass(LeaderScheduler, Scheduler)
    with pytest.raises(TypeError, match=r"celery\.beat\.Scheduler subclass"):
        celery_leaderfeed.leader_gated(dict)


def test_a_shared_backend_whose_driver_is_missing_still_serves_its_urls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default-backend resolution takes such a URL, so that building it names the extra."""
    from celery_leaderfeed import backends

    missing = backends._Entry(
        "leaderfeed_no_such_driver.mod:Backend", "leaderfeed_no_such_driver", "x"
    )
    monkeypatch.setitem(backends._REGISTRY, "nodriver", missing)
    assert backends.serves_shared("nodriver://h/0") is True
    assert backends.serves_shared("memory://x") is False  # one process only
    assert backends.serves_shared("rpc://") is False  # no backend at all
    assert backends.serves_shared("not a url") is False
