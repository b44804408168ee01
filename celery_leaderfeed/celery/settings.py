"""Celery settings for leaderfeed, resolved once: explicit value, then ``app.conf``, then default.

Settings are lowercase with the ``leaderfeed_`` prefix and are read with ``app.conf.get`` so
``app.config_from_object(..., namespace="CELERY")`` (Django's ``CELERY_LEADERFEED_BACKEND``)
works. ``celery inspect conf`` / ``celery report`` hide the password of ``leaderfeed_backend``
in any URL form (see :mod:`celery_leaderfeed.celery.control`); Celery masks the keys inside
``leaderfeed_backend_options`` that look secret (password, token, key...).

Each setting, its default and what it means (the documentation's settings page is generated
from this list and checked against :data:`DEFAULTS`; a default shown as a literal must be the
one in :data:`DEFAULTS`):

``leaderfeed_backend`` (default: derived, see below)
    The store holding the election: ``redis://``, ``rediss://``, ``unix://``, ``sentinel://``,
    ``redis+cluster://``, ``postgresql://``, ``mongodb://``, ``mongodb+srv://``,
    ``rethinkdb://`` (or ``memory://`` in one process).
``leaderfeed_backend_options`` (default: ``{}``)
    Options of the backend (MongoDB's collection, Redis' ``master_name``, ``ssl``,
    ``wait_replicas``, PostgreSQL's schema and table...).
``leaderfeed_name`` (default: ``app.main``, else ``"celery"``)
    Election name: the workers sharing it elect one leader.
``leaderfeed_heartbeat_interval`` (default: ``1.0``)
    Seconds between the leader's renewals.
``leaderfeed_election_timeout_min`` (default: ``3.0``)
    Lower bound of the time a follower waits, without seeing a renewal, before it claims.
``leaderfeed_election_timeout_max`` (default: ``4.0``)
    Upper bound of that wait: a crash fails over within it.
``leaderfeed_operation_timeout`` (default: the heartbeat interval)
    Bound on every store call, in seconds.
``leaderfeed_queue`` (default: ``<name>.leader``)
    Queue of ``@leader_only`` tasks; only the leading worker consumes it.
``leaderfeed_follower_policy`` (default: ``'requeue'``)
    What a ``@leader_only`` task does on a follower: ``requeue`` (back to the leader queue),
    ``skip``, ``retry`` (later) or ``raise``.
``leaderfeed_retry_delay`` (default: ``leaderfeed_election_timeout_max``)
    Countdown of the ``retry`` policy, in seconds.
``leaderfeed_misfire_policy`` (default: ``'run_once'``)
    Runs missed during a failover gap: ``run_once``, ``skip`` or ``catch_up``.
``leaderfeed_catch_up_limit`` (default: ``10``)
    At most this many missed runs per entry are sent under ``catch_up``.
``leaderfeed_beat_name`` (default: ``<name>.beat``)
    Election of standalone ``celery beat`` processes (an embedded beat follows its worker's
    election).
``leaderfeed_eager_policy`` (default: ``'error'``)
    ``@leader_only`` run in the caller (``task_always_eager``, ``apply()``, a direct call)
    where no worker lease is visible: ``error`` (raise ``NotLeaderError`` saying what to do),
    ``run`` (the body runs, term 1) or ``follower`` (the follower policy).
``leaderfeed_metrics_port`` (default: ``None``)
    Port of the Prometheus endpoint of a worker or standalone beat (needs the ``prometheus``
    extra; see :mod:`celery_leaderfeed.celery.metrics`).
``leaderfeed_dedup_window`` (default: ``604800.0``, 7 days)
    Seconds a periodic run's once-only mark is kept (see :mod:`celery_leaderfeed.celery.once`):
    a republished duplicate delivered later than this after the original runs again.

``leaderfeed_backend``, when not set, is the first of: the broker URL if it is Redis (the first
Redis URL of a failover list; a ``sentinel://`` broker's whole list of sentinels), then
``result_backend`` if it names a store leaderfeed supports (``redis://``, ``sentinel://``,
``mongodb://``, Celery's ``db+postgresql://``...; not ``rpc://``, ``django-db``, SQLite or
MySQL). A Redis backend taken from the broker takes its TLS settings too (``broker_use_ssl``)
and, behind Sentinel, ``master_name``, ``sentinel_kwargs`` and ``min_other_sentinels`` from
``broker_transport_options``; one taken from ``result_backend`` takes ``redis_backend_use_ssl``
and ``result_backend_transport_options``. ``leaderfeed_backend_options`` overrides them key by
key. The worker logs once, at INFO, which URL it chose and why (password hidden);
if neither fits, it stops with a ``ConfigurationError`` saying to set ``leaderfeed_backend``.

Timings are checked together (:class:`~celery_leaderfeed.Timing`): the heartbeat interval and
the operation timeout are at least 20 ms (a store round trip plus a Python thread's scheduling
delay take several ms; less makes leadership flap), ``election_timeout_min`` is at least twice
the heartbeat, ``_max`` exceeds ``_min`` and the operation timeout is at most ``_min`` minus the
heartbeat. A ``leaderfeed*`` key that no setting reads (a typo, or a spelling the
configuration's namespace does not read) is reported by :func:`unknown_settings`; the worker and
beat log it once at start.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from ..backends import Backend, backend_class, backend_from_url, serves_shared
from ..engine.feed import LeaderFeed
from ..errors import ConfigurationError
from ..timing import Timing
from ..urls import REDIS_SCHEMES, SENTINEL_SCHEMES, redact_options, redact_url, url_scheme
from ._extras import celery_extra

with celery_extra():
    import click

__all__ = [
    "DEFAULTS",
    "EAGER_POLICIES",
    "FOLLOWER_POLICIES",
    "MISFIRE_POLICIES",
    "LeaderfeedSettings",
    "StartupConfigurationError",
    "eager_policy",
    "election_name",
    "leader_queue_name",
    "resolve_settings",
    "unknown_settings",
]

FollowerPolicy = Literal["requeue", "skip", "retry", "raise"]
EagerPolicy = Literal["error", "run", "follower"]
EAGER_POLICIES: tuple[EagerPolicy, ...] = ("error", "run", "follower")
MisfirePolicy = Literal["run_once", "skip", "catch_up"]
FOLLOWER_POLICIES: tuple[FollowerPolicy, ...] = ("requeue", "skip", "retry", "raise")
MISFIRE_POLICIES: tuple[MisfirePolicy, ...] = ("run_once", "skip", "catch_up")

logger = logging.getLogger("celery_leaderfeed")
#: Default backend URLs already announced by this process (and the processes it forked).
_announced: set[str] = set()

#: Defaults, applied by :func:`resolve_settings` itself (not with ``app.add_defaults``, which
#: would shadow values loaded by ``config_from_object``); backend and name derive from the app.
DEFAULTS: dict[str, Any] = {
    "leaderfeed_backend": None,
    "leaderfeed_backend_options": {},
    "leaderfeed_name": None,
    "leaderfeed_queue": None,
    "leaderfeed_heartbeat_interval": 1.0,
    "leaderfeed_election_timeout_min": 3.0,
    "leaderfeed_election_timeout_max": 4.0,
    "leaderfeed_operation_timeout": None,
    "leaderfeed_follower_policy": "requeue",
    "leaderfeed_retry_delay": None,
    "leaderfeed_misfire_policy": "run_once",
    "leaderfeed_catch_up_limit": 10,
    "leaderfeed_beat_name": None,
    "leaderfeed_eager_policy": "error",
    "leaderfeed_metrics_port": None,
    "leaderfeed_dedup_window": 7 * 24 * 3600.0,
}


class StartupConfigurationError(ConfigurationError, click.ClickException):
    """A bad leaderfeed setting, found while ``celery worker`` or ``celery beat`` starts.

    Also a ``click.ClickException``, so either command exits with one ``Error: leaderfeed: ...``
    line and status 1 instead of a traceback; code that builds workers or schedulers itself
    catches it as a :class:`~celery_leaderfeed.errors.ConfigurationError`.
    """

    def __init__(self, message: str) -> None:
        click.ClickException.__init__(self, f"leaderfeed: {message}")


@dataclass(frozen=True, slots=True)
class LeaderfeedSettings:
    """Every leaderfeed setting of one app, validated."""

    backend_url: str
    name: str
    timing: Timing
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    follower_policy: FollowerPolicy = "requeue"
    retry_delay: float = 4.0
    misfire_policy: MisfirePolicy = "run_once"
    catch_up_limit: int = 10
    beat_name: str = "celery.beat"
    #: Queue of the election's leader-only tasks (default ``<name>.leader``).
    queue: str = "celery.leader"
    #: ``@leader_only`` run in the caller where no worker lease is visible (see the table).
    eager_policy: EagerPolicy = "error"
    #: TCP port of the Prometheus endpoint of a worker or standalone beat (None: none).
    metrics_port: int | None = None
    #: Seconds a periodic run's once-only mark is kept (consumer-side deduplication).
    dedup_window: float = 7 * 24 * 3600.0

    def __repr__(self) -> str:
        # Not the generated one: the backend's URL and options may hold a password.
        shown = {item.name: getattr(self, item.name) for item in fields(self)}
        shown["backend_url"] = redact_url(self.backend_url)
        shown["backend_options"] = redact_options(self.backend_options)
        return f"LeaderfeedSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def store(self, election: str | None = None) -> Backend:
        """A backend, not yet connected, for ``election`` (default: :attr:`name`)."""
        return backend_from_url(
            self.backend_url,
            name=self.name if election is None else election,
            timeout=self.timing.timeout,
            options=self.backend_options,
        )

    @property
    def shared_across_processes(self) -> bool:
        """False if the store lives inside this process (``memory://``)."""
        return backend_class(self.backend_url).shared_across_processes

    def feed(self, member_id: str, *, election: str | None = None) -> LeaderFeed:
        """A member ``member_id``, not yet started, of ``election`` (default: :attr:`name`)."""
        return LeaderFeed(
            self.backend_url,
            name=self.name if election is None else election,
            member_id=member_id,
            timing=self.timing,
            options=self.backend_options,
        )


def _lookup(app: Any, overrides: Mapping[str, Any], key: str) -> Any:
    """Explicit override (e.g. a worker CLI option), then the app's configuration."""
    value = overrides.get(key)
    if value is not None:
        return value
    value = app.conf.get(key)
    return DEFAULTS.get(key) if value is None else value


def _default_backend(app: Any) -> tuple[str, dict[str, Any]]:
    """The store to use when ``leaderfeed_backend`` is not set (see the module docstring), and
    the backend options that come with it: a Sentinel's ``master_name``, ``sentinel_kwargs``
    and ``min_other_sentinels`` from ``broker_transport_options`` (or
    ``result_backend_transport_options``), TLS from ``broker_use_ssl`` (or
    ``redis_backend_use_ssl``)."""
    broker = app.conf.get("broker_url")
    if isinstance(broker, str):
        chunks = [chunk.strip() for chunk in broker.split(";") if chunk.strip()]
        sentinels = [chunk for chunk in chunks if url_scheme(chunk) in SENTINEL_SCHEMES]
        if sentinels:  # kombu's list of sentinels, not a failover list
            url = ";".join(sentinels)
            options = _store_options(app, url, "broker_transport_options", "broker_use_ssl")
            return _announce(url, "the broker is Redis behind Sentinel", options), options
        for url in chunks:  # kombu failover lists
            if url_scheme(url) in REDIS_SCHEMES:
                options = _store_options(app, url, "broker_transport_options", "broker_use_ssl")
                return _announce(url, "the broker is Redis", options), options
    result_backend = app.conf.get("result_backend")
    if isinstance(result_backend, str) and _supported_store(result_backend):
        options = _store_options(
            app, result_backend, "result_backend_transport_options", "redis_backend_use_ssl"
        )
        why = "the broker is not Redis and result_backend names a store it supports"
        return _announce(result_backend, why, options), options
    raise ConfigurationError(
        "leaderfeed_backend is not set, the broker is not Redis and result_backend names no "
        "store leaderfeed supports: set leaderfeed_backend to a redis://, sentinel://, "
        "mongodb://, postgresql:// or rethinkdb:// URL"
    )


#: Transport options of kombu's and Celery's Sentinel support that the Redis backend reads.
_SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")


def _store_options(app: Any, url: str, transport_key: str, ssl_key: str) -> dict[str, Any]:
    """The options a Redis backend taken from the broker (or result backend) inherits."""
    if "://" not in url or url_scheme(url) not in (*REDIS_SCHEMES, *SENTINEL_SCHEMES):
        return {}
    options: dict[str, Any] = {}
    if url_scheme(url) in SENTINEL_SCHEMES:
        transport = app.conf.get(transport_key) or {}
        if isinstance(transport, Mapping):
            options.update({k: transport[k] for k in _SENTINEL_OPTIONS if k in transport})
    use_ssl = app.conf.get(ssl_key)
    if use_ssl and url_scheme(url) != "unix":
        options["ssl"] = dict(use_ssl) if isinstance(use_ssl, Mapping) else True
    return options


def _supported_store(url: str) -> bool:
    """True for a URL whose scheme a leaderfeed backend shared by processes serves (a missing
    driver still counts: resolving it then names the extra to install)."""
    return "://" in url and serves_shared(url)  # not "django-db", "disabled"...


def _announce(url: str, why: str, options: Mapping[str, Any]) -> str:
    if url not in _announced:
        _announced.add(url)
        inherited = f"; options {', '.join(sorted(options))} from it" if options else ""
        logger.info(
            "leaderfeed: leaderfeed_backend is not set; using %s (%s%s)",
            redact_url(url),
            why,
            inherited,
        )
    return url


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigurationError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    return cast(str, value)


def _number(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigurationError(f"{key} must be a number of seconds, got {value!r}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{key} must be a positive number of seconds, got {value!r}")
    return float(value)


def unknown_settings(app: Any) -> list[str]:
    """A warning for each ``leaderfeed*`` key of ``app.conf`` that no setting reads.

    A key is read under its own name or, with ``config_from_object(..., namespace="CELERY")``,
    as ``CELERY_LEADERFEED_...``; anything else (a typo, ``LEADERFEED_...`` beside a namespace)
    is ignored by Celery, so each warning names the closest spelling that would be read.
    """
    conf = app.conf
    keys = [key for key in conf if isinstance(key, str)]  # loads the configuration first
    prefix: str = getattr(conf, "prefix", None) or ""  # set by config_from_object(namespace=)
    read = {spelling for setting in DEFAULTS for spelling in _spellings(setting, prefix)}
    warnings = []
    for key in sorted(keys):
        bare = key.lower()
        if prefix and bare.startswith(prefix.lower()):
            bare = bare[len(prefix) :]
        if bare.startswith("leaderfeed") and key not in read:
            warnings.append(_unknown_setting(key, bare, prefix))
    return warnings


def _spellings(setting: str, prefix: str) -> tuple[str, ...]:
    """The keys ``app.conf.get(setting)`` looks up (Celery matches the prefix's case)."""
    if not prefix:
        return (setting,)
    namespaced = prefix + setting
    return (setting, namespaced.upper() if prefix.isupper() else namespaced.lower())


def _unknown_setting(key: str, bare: str, prefix: str) -> str:
    # Compared without the shared "leaderfeed_", which would make every name look close.
    stem = len("leaderfeed_")
    names = {setting[stem:]: setting for setting in DEFAULTS}
    closest = difflib.get_close_matches(bare[stem:], names, n=1)
    if not closest:
        known = ", ".join(_spellings(setting, prefix)[-1] for setting in DEFAULTS)
        return f"unknown setting {key} is ignored; the settings are {known}"
    return f"unknown setting {key}; did you mean {_spellings(names[closest[0]], prefix)[-1]}?"


def _timing(get: Callable[[str], Any]) -> Timing:
    operation_timeout = get("leaderfeed_operation_timeout")
    try:
        return Timing(
            heartbeat_interval=_number(
                "leaderfeed_heartbeat_interval", get("leaderfeed_heartbeat_interval")
            ),
            election_timeout_min=_number(
                "leaderfeed_election_timeout_min", get("leaderfeed_election_timeout_min")
            ),
            election_timeout_max=_number(
                "leaderfeed_election_timeout_max", get("leaderfeed_election_timeout_max")
            ),
            operation_timeout=None
            if operation_timeout is None
            else _number("leaderfeed_operation_timeout", operation_timeout),
        )
    except ConfigurationError as exc:
        if str(exc).startswith("leaderfeed_"):
            raise
        # Timing's messages begin with the field at fault: name the setting the user wrote.
        raise ConfigurationError(f"leaderfeed_{exc}") from exc


def resolve_settings(app: Any, overrides: Mapping[str, Any] | None = None) -> LeaderfeedSettings:
    """Read and validate every ``leaderfeed_*`` setting of ``app``.

    ``overrides`` maps setting names (``leaderfeed_backend``...) to explicit values, such as
    the worker's ``--leaderfeed-*`` options; ``None`` values are ignored. Raises
    :class:`ConfigurationError` with one line naming the setting at fault.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ConfigurationError(f"unknown leaderfeed setting(s): {', '.join(sorted(unknown))}")

    def get(key: str) -> Any:
        return _lookup(app, given, key)

    backend_url = get("leaderfeed_backend")
    inherited: dict[str, Any] = {}
    if not backend_url:
        backend_url, inherited = _default_backend(app)
    if not isinstance(backend_url, str):
        raise ConfigurationError(  # not its repr: a URL in bytes would show its password
            f"leaderfeed_backend must be a URL string, got {type(backend_url).__name__}"
        )
    backend_class(backend_url)  # unknown scheme or missing driver: fail now, in one line

    name = election_name(app, given)

    timing = _timing(get)

    options = get("leaderfeed_backend_options")
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"leaderfeed_backend_options must be a mapping, got {options!r}")
    options = {**inherited, **options}  # what the user set for leaderfeed wins
    # Backends read their options when built (no I/O): a bad one fails now, in one line.
    backend_from_url(backend_url, name=name, timeout=timing.timeout, options=options)

    retry_delay = get("leaderfeed_retry_delay")
    limit = get("leaderfeed_catch_up_limit")
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(
            f"leaderfeed_catch_up_limit must be a positive integer, got {limit!r}"
        )

    queue = leader_queue_name(app, given)

    beat_name = get("leaderfeed_beat_name") or f"{name}.beat"
    if not isinstance(beat_name, str):
        raise ConfigurationError(f"leaderfeed_beat_name must be a string, got {beat_name!r}")

    return LeaderfeedSettings(
        backend_url=backend_url,
        name=name,
        timing=timing,
        backend_options=dict(options),
        follower_policy=cast(
            FollowerPolicy,
            _choice(
                "leaderfeed_follower_policy", get("leaderfeed_follower_policy"), FOLLOWER_POLICIES
            ),
        ),
        retry_delay=timing.election_timeout_max
        if retry_delay is None
        else _number("leaderfeed_retry_delay", retry_delay),
        misfire_policy=cast(
            MisfirePolicy,
            _choice(
                "leaderfeed_misfire_policy", get("leaderfeed_misfire_policy"), MISFIRE_POLICIES
            ),
        ),
        catch_up_limit=limit,
        beat_name=beat_name,
        queue=queue,
        eager_policy=eager_policy(app, given),
        metrics_port=_port("leaderfeed_metrics_port", get("leaderfeed_metrics_port")),
        dedup_window=_number("leaderfeed_dedup_window", get("leaderfeed_dedup_window")),
    )


def _port(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigurationError(f"{key} must be a TCP port (1-65535), got {value!r}")
    return value


def election_name(app: Any, overrides: Mapping[str, Any] | None = None) -> str:
    """``leaderfeed_name`` of ``app`` (default: the app's main module name, else "celery")."""
    name = _lookup(app, overrides or {}, "leaderfeed_name") or getattr(app, "main", None)
    if not name or name == "__main__":
        return "celery"
    if not isinstance(name, str):
        raise ConfigurationError(f"leaderfeed_name must be a string, got {name!r}")
    return name


def eager_policy(app: Any, overrides: Mapping[str, Any] | None = None) -> EagerPolicy:
    """``leaderfeed_eager_policy`` of ``app``, read without resolving the other settings: an
    eager test run often configures no store at all."""
    value = _lookup(app, overrides or {}, "leaderfeed_eager_policy")
    if value is None:
        value = DEFAULTS["leaderfeed_eager_policy"]
    return cast(EagerPolicy, _choice("leaderfeed_eager_policy", value, EAGER_POLICIES))


def leader_queue_name(app: Any, overrides: Mapping[str, Any] | None = None) -> str:
    """The leader queue of ``app``'s election: ``leaderfeed_queue``, else ``<name>.leader``.

    Read without resolving the other settings, so a client that only sends tasks (no store
    configured) routes leader-only tasks the way its workers consume them.
    """
    queue = _lookup(app, overrides or {}, "leaderfeed_queue")
    if queue is None:
        return f"{election_name(app, overrides)}.leader"
    if not isinstance(queue, str) or not queue.strip():
        raise ConfigurationError(f"leaderfeed_queue must be a queue name, got {queue!r}")
    return queue
