"""How the Redis backend reaches its server: one server, a Sentinel-managed master, or a Cluster.

:func:`topology` reads the URL and options at construction (so a mistake fails there, in one
line); :meth:`Topology.client` builds the redis-py client when the engine connects (a Cluster
client connects as it is built, and a backend never connects at construction).

==================================================  ===========================================
URL                                                 client
==================================================  ===========================================
``redis://``, ``rediss://`` (TLS), ``unix://``      ``redis.Redis.from_url``
``sentinel://h1:26379;sentinel://h2:26379``,        ``redis.sentinel.Sentinel(...).master_for(
``redis+sentinel://`` (kombu's and Celery's form)   master_name)``: every new connection asks the
                                                    sentinels where the master is now
``redis+cluster://h1:7000;redis+cluster://h2:7001`` ``redis.cluster.RedisCluster`` (seed nodes)
(``rediss+cluster://`` with TLS)
==================================================  ===========================================

TLS settings come from the URL's query (``ssl_cert_reqs``, ``ssl_ca_certs``...) or from the
``ssl`` option - a mapping spelled like Celery's ``broker_use_ssl``, which the Celery layer
passes on when the backend is the broker. ``ssl_cert_reqs`` takes redis-py's ``required`` /
``optional`` / ``none``, Celery's ``CERT_REQUIRED`` / ``CERT_OPTIONAL`` / ``CERT_NONE`` and the
``ssl.CERT_*`` constants.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from ...errors import ConfigurationError
from ...urls import (
    CLUSTER_SCHEMES,
    MISREAD_USERINFO,
    SENTINEL_SCHEMES,
    misread_userinfo,
    redact_url,
    url_error,
    url_scheme,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "LatestEpochSentinel",
    "Topology",
    "cert_reqs",
    "topology",
]

_TLS_SCHEMES = ("rediss", "rediss+sentinel", "rediss+cluster")
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}

#: Every spelling of ``ssl_cert_reqs`` accepted, and redis-py's.
_CERT_REQS: dict[object, str] = {
    "required": "required",
    "optional": "optional",
    "none": "none",
    "cert_required": "required",
    "cert_optional": "optional",
    "cert_none": "none",
    ssl.CERT_REQUIRED: "required",
    ssl.CERT_OPTIONAL: "optional",
    ssl.CERT_NONE: "none",
}
#: The keys of Celery's ``broker_use_ssl`` / ``redis_backend_use_ssl`` for Redis, and redis-py's.
_SSL_KEYS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)

Kind = Literal["server", "sentinel", "cluster"]
_parse_url = cast("Callable[[str], dict[str, Any]]", redis.connection.parse_url)  # unannotated


def cert_reqs(value: object, where: str) -> str:
    """redis-py's spelling of an ``ssl_cert_reqs`` value, or a ConfigurationError naming it."""
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in _CERT_REQS:
        raise ConfigurationError(
            f"{where}: ssl_cert_reqs must be CERT_REQUIRED, CERT_OPTIONAL or CERT_NONE "
            f"(or required, optional, none), got {value!r}"
        )
    return _CERT_REQS[key]


def _tls_options(value: object) -> dict[str, Any] | None:
    """The ``ssl`` option: None (TLS only if the URL says so), or the TLS keyword arguments."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"option 'ssl' must be a mapping like Celery's broker_use_ssl or True, "
            f"got {type(value).__name__}"
        )
    unknown = sorted(str(key) for key in value if key not in _SSL_KEYS)
    if unknown:
        raise ConfigurationError(
            f"option 'ssl': unknown key(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_SSL_KEYS))})"
        )
    options = dict(value)
    if "ssl_cert_reqs" in options:
        options["ssl_cert_reqs"] = cert_reqs(options["ssl_cert_reqs"], "option 'ssl'")
    return options


def _normalised_query(url: str) -> str:
    """``url`` with Celery's ``ssl_cert_reqs`` spellings turned into redis-py's."""
    parts = urlsplit(url)
    if "ssl_cert_reqs" not in parts.query:
        return url
    pairs = [
        (key, cert_reqs(value, "backend URL") if key == "ssl_cert_reqs" else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(pairs)))


@dataclass(frozen=True)
class _Address:
    host: str
    port: int


@dataclass(frozen=True, repr=False)  # its URL and connection hold the password
class Topology:
    """What to connect to, read from the URL and options, not yet connected."""

    kind: Kind
    url: str
    #: Sentinels (kind ``sentinel``) or seed nodes (kind ``cluster``).
    addresses: tuple[_Address, ...] = ()
    master_name: str | None = None
    sentinel_kwargs: Mapping[str, Any] = field(default_factory=dict)
    min_other_sentinels: int = 0
    #: Keyword arguments of every data connection (password, db, TLS...).
    connection: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Topology {self.kind} {redact_url(self.url)}>"

    @property
    def database(self) -> object:
        """The database number the connections select."""
        if self.kind == "server":
            return _parse_url(self.url).get("db", 0)
        return self.connection.get("db", 0)

    @property
    def places(self) -> str:
        """The sentinels or seed nodes, for messages."""
        return ", ".join(f"{a.host}:{a.port}" for a in self.addresses)

    def client(self, *, timeout: float, client_name: str) -> tuple[redis.Redis, list[Any]]:
        """A new client (a ``RedisCluster`` for a Cluster, which connects here), and what else
        to close with it (the connections to the sentinels)."""
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Fail fast and visibly: the engine decides when to retry, and a silent reconnect
            # of the pub/sub connection would lose messages without anyone noticing.
            "retry": Retry(NoBackoff(), 0),
            "client_name": client_name,
        }
        if self.kind == "server":
            built: redis.Redis = redis.Redis.from_url(
                self.url, retry_on_timeout=False, **common, **self.connection
            )
            return built, []
        if self.kind == "sentinel":
            sentinel_kwargs = {
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": Retry(NoBackoff(), 0),
                **self.sentinel_kwargs,
            }
            manager = LatestEpochSentinel(
                [(a.host, a.port) for a in self.addresses],
                min_other_sentinels=self.min_other_sentinels,
                sentinel_kwargs=sentinel_kwargs,
                **common,
                **self.connection,
            )
            master: redis.Redis = manager.master_for(cast(str, self.master_name))
            return master, list(manager.sentinels)
        node = cast(Any, ClusterNode)  # unannotated in redis-py
        cluster = RedisCluster(
            startup_nodes=[node(a.host, a.port) for a in self.addresses],
            require_full_coverage=False,
            **common,
            **self.connection,
        )
        return cast(redis.Redis, cluster), []

    def unknown_master(self) -> str | None:
        """When no answering sentinel monitors :attr:`master_name`: the names they do monitor
        (comma-separated, maybe empty); None if none answered or one knows it (an outage)."""
        if self.kind != "sentinel":
            return None
        answered, names = False, set[str]()
        for address in self.addresses:
            probe = redis.Redis(
                host=address.host,
                port=address.port,
                retry=Retry(NoBackoff(), 0),
                **{"socket_timeout": 0.5, "socket_connect_timeout": 0.5, **self.sentinel_kwargs},
            )
            try:
                masters = cast(Mapping[str, Any], probe.sentinel_masters())
            except redis.RedisError:
                continue
            finally:
                probe.close()
            answered = True
            names.update(str(name) for name in masters)
        if not answered or self.master_name in names:
            return None
        return ", ".join(sorted(names))


class LatestEpochSentinel(Sentinel):
    """redis-py's ``Sentinel``, asking *every* sentinel where the master is and believing the
    answer with the highest ``config-epoch`` (redis-py's takes the first answer).

    Each failover raises the epoch, and the sentinel that ran it knows first; the others learn
    it from its hello messages, about two seconds later. Taking the first answer, a member could
    keep writing to the old master - which stays a master, with its clients, for about ten
    seconds after ``SENTINEL FAILOVER`` - while another member that asked the sentinel that
    switched already claims on the new one.
    """

    def discover_master(self, service_name: str) -> tuple[str, int]:
        best: tuple[int, tuple[str, int]] | None = None
        errors: list[str] = []
        for sentinel in self.sentinels:
            try:
                masters = cast(Mapping[str, Any], sentinel.sentinel_masters())
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError) as exc:
                errors.append(f"{sentinel}: {exc!r}")
                continue
            state = masters.get(service_name)
            if state and cast(Any, self).check_master_state(state, service_name):
                epoch = int(state.get("config-epoch", 0))
                if best is None or epoch > best[0]:
                    best = (epoch, (str(state["ip"]), int(state["port"])))
        if best is None:
            detail = f" : {', '.join(errors)}" if errors else ""
            raise MasterNotFoundError(f"No master found for {service_name!r}{detail}")
        return best[1]


def topology(url: str, options: Mapping[str, Any]) -> Topology:
    """Read ``url`` and the connection options; ConfigurationError (password hidden) if bad."""
    scheme = url_scheme(url)
    shown = redact_url(url)
    tls = _tls_options(options.get("ssl"))
    if scheme in SENTINEL_SCHEMES or scheme in CLUSTER_SCHEMES:
        kind: Kind = "sentinel" if scheme in SENTINEL_SCHEMES else "cluster"
        addresses, connection = _hosts(url, shown, kind)
        if scheme in _TLS_SCHEMES or tls is not None:
            connection.update({"ssl": True, **(tls or {})})
        if kind == "cluster":
            for key in ("db",):
                if connection.pop(key, 0) not in (0, None):
                    raise ConfigurationError(
                        f"invalid Redis Cluster URL {shown!r}: a Cluster has only database 0"
                    )
            return Topology("cluster", url, addresses, connection=connection)
        master_name = options.get("master_name")
        if not isinstance(master_name, str) or not master_name:
            raise ConfigurationError(
                f"a {scheme}:// backend needs the name of the master the sentinels monitor: "
                f"set master_name in broker_transport_options (when the backend is the broker), "
                f"result_backend_transport_options (when it is the result backend) or "
                f"leaderfeed_backend_options (got {master_name!r})"
            )
        sentinel_kwargs = options.get("sentinel_kwargs") or {}
        if not isinstance(sentinel_kwargs, Mapping):
            raise ConfigurationError(
                f"option 'sentinel_kwargs' must be a mapping, got {type(sentinel_kwargs).__name__}"
            )
        minimum = options.get("min_other_sentinels", 0)
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
            raise ConfigurationError(
                f"option 'min_other_sentinels' must be a whole number >= 0, got {minimum!r}"
            )
        return Topology(
            "sentinel",
            url,
            addresses,
            master_name=master_name,
            sentinel_kwargs=dict(sentinel_kwargs),
            min_other_sentinels=minimum,
            connection=connection,
        )
    for key in ("master_name", "sentinel_kwargs", "min_other_sentinels"):
        if key in options:
            raise ConfigurationError(
                f"option {key!r} is for a sentinel:// backend URL, not {scheme}://"
            )
    if misread_userinfo(url):  # redis-py would send a piece of it to the "host"
        raise ConfigurationError(f"invalid Redis URL {shown!r}: {MISREAD_USERINFO}")
    normalised = _normalised_query(url)
    connection = {}
    if tls is not None:
        if scheme == "unix":
            raise ConfigurationError("option 'ssl' is for TCP connections, not a unix:// socket")
        if scheme == "redis":
            normalised = "rediss" + normalised[len("redis") :]
        connection = tls
    try:
        # Parse now so a malformed URL fails at construction, not in a thread later.
        _parse_url(normalised)
    except ValueError as exc:
        raise ConfigurationError(f"invalid Redis URL {shown!r}: {url_error(url, exc)}") from None
    return Topology("server", normalised, connection=connection)


def _hosts(url: str, shown: str, kind: Kind) -> tuple[tuple[_Address, ...], dict[str, Any]]:
    """The addresses of a ``;``-separated list, and the credentials and database of the first
    (kombu and Celery read them there)."""
    addresses: list[_Address] = []
    connection: dict[str, Any] = {}
    for index, chunk in enumerate(part.strip() for part in url.split(";")):
        if not chunk:
            continue
        if misread_userinfo(chunk):
            raise ConfigurationError(f"invalid {kind} URL {shown!r}: {MISREAD_USERINFO}")
        try:
            parts = urlsplit(chunk)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid {kind} URL {shown!r}: {url_error(chunk, exc)}"
            ) from None
        if "://" not in chunk or not parts.hostname:
            raise ConfigurationError(
                f"invalid {kind} URL {shown!r}: each ';'-separated part needs a scheme and a host"
            )
        addresses.append(_Address(parts.hostname, port or _DEFAULT_PORTS[kind]))
        if index == 0:
            if parts.username:
                connection["username"] = unquote(parts.username)
            if parts.password is not None:
                connection["password"] = unquote(parts.password)
            path = parts.path.strip("/")
            if path:
                if not path.isdigit():
                    raise ConfigurationError(
                        f"invalid {kind} URL {shown!r}: the path must be a database number"
                    )
                connection["db"] = int(path)
    if not addresses:
        raise ConfigurationError(f"invalid {kind} URL {shown!r}: no host")
    return tuple(addresses), connection
