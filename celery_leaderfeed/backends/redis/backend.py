"""The Redis backend: a key changed by Lua scripts, announced on pub/sub.

The record is a JSON string under ``leaderfeed:{NAME}:leader``; every write is one Lua script
(:mod:`.scripts`) that checks and writes the record atomically, takes its timestamp from Redis's
``TIME`` and announces the new record on ``leaderfeed:{NAME}:events``. Pub/sub is
at-most-once, so the engine never relies on it for safety: it is only the fast path that tells
followers a leader resigned or changed. Needs Redis >= 5 (scripts replicated by effects, so
``TIME`` is allowed).

Every write stamps the record with the server's history, ``run_id/master_replid`` read with
``INFO`` inside the script: a restart (from an RDB or AOF file that may predate the last
writes) changes the run id, a promoted replica has a new replication id - after a Sentinel
failover too. A record stamped with another history is *suspect* (``Observation.suspect``): it
may be an earlier state than the one members acted on, so only a claim may replace it, and that
claim is acted on one election timeout later.

Once-only marks are string keys ``leaderfeed:{NAME}:mark:KEY`` (the election's hash slot
whatever the key holds: the first ``{...}`` is the tag), set by one script with ``PX`` so that
Redis expires them by its own clock.

``wait_replicas=N`` sends ``WAIT N`` right after each write (a new mark included), pipelined
on the same connection (``WAIT`` counts the replicas that have this connection's writes), and
reports a write that fewer than N replicas acknowledged within half the operation timeout as
a failure (``BackendUnavailable``): the member does not act on it, and the write is announced
on the channel only once acknowledged. See docs/guides/redis-production.md for what that does
and does not guarantee.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Iterator, Mapping
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError

from ...errors import BackendUnavailable, ConfigurationError
from ...record import Observation, WriteResult
from ..base import Backend, Refusal, Subscription
from .clients import CLUSTER_SCHEMES, SENTINEL_SCHEMES, Topology, topology
from .feed import RedisSubscription
from .replies import observation, text
from .scripts import Publish, scripts

__all__ = ["RedisBackend"]

#: Error replies that may heal by themselves (a replica promoted, memory freed, a script ended):
#: the classes redis-py maps them to, and the codes of those it leaves as ResponseError.
_TRANSIENT_REPLIES = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.AskError,
    redis.exceptions.NoScriptError,
)
_TRANSIENT_CODES = ("BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS", "OOM", "READONLY", "TRYAGAIN")
_AUTH_ERRORS = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)
_TLS_FIX = (
    "name the CA that signed it with ?ssl_ca_certs=/path/ca.pem in the backend URL, or "
    "ssl_ca_certs in broker_use_ssl (when the backend is the broker) or in the backend's "
    "'ssl' option"
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (redis-py wraps socket errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


class RedisBackend(Backend):
    """Backend for ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS),
    ``unix:///path/to/socket?db=N``, a Sentinel-managed master
    (``sentinel://[:password@]h1:26379[/db];sentinel://h2:26379``, also ``redis+sentinel://``)
    and a Redis Cluster (``redis+cluster://h1:7000;redis+cluster://h2:7001``,
    ``rediss+cluster://`` with TLS).

    Options: ``key_prefix`` (default ``"leaderfeed"``); ``client``, an existing
    :class:`redis.Redis` or :class:`redis.cluster.RedisCluster` to use instead of one built from
    the URL (it is not closed); ``master_name`` (required with Sentinel), ``sentinel_kwargs``
    (connection arguments for the sentinels, e.g. their password) and ``min_other_sentinels``,
    spelled as in kombu's and Celery's transport options; ``ssl``, TLS settings spelled as
    Celery's ``broker_use_ssl``; ``wait_replicas`` (default 0: off), see the module docstring.
    """

    schemes = ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
    connection_errors = (redis.RedisError, OSError, RedisClusterException)
    option_names = frozenset(
        {
            "key_prefix",
            "client",
            "ssl",
            "master_name",
            "sentinel_kwargs",
            "min_other_sentinels",
            "wait_replicas",
        }
    )

    def _configure(self) -> None:
        prefix = self.options.get("key_prefix", "leaderfeed")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(
                f"option 'key_prefix' must be a non-empty string, got {prefix!r}"
            )
        client = self.options.get("client")
        if client is not None and not (isinstance(client, redis.Redis) or _is_cluster(client)):
            raise ConfigurationError(
                f"option 'client' must be a redis.Redis or a redis.cluster.RedisCluster, "
                f"got {type(client).__name__}"
            )
        wait = self.options.get("wait_replicas", 0)
        if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
            raise ConfigurationError(
                f"option 'wait_replicas' must be a whole number >= 0, got {wait!r}"
            )
        self.wait_replicas: int = wait
        # The braces are a Redis Cluster hash tag: all keys of one election share a slot.
        base = f"{prefix}:{{{self.name}}}"
        self.record_key = f"{base}:leader"
        self.schedule_key = f"{base}:schedule"
        self.channel = f"{base}:events"
        #: Once-only marks: one string key each, this prefix and the mark's key.
        self.mark_prefix = f"{base}:mark:"
        keys = (self.record_key, self.schedule_key, self.mark_prefix)
        slots = {key_slot(key.encode()) for key in keys}
        if len(slots | {key_slot(self.channel.encode())}) > 1:
            raise ConfigurationError(
                f"option 'key_prefix' {prefix!r}: its braces make the election's keys fall in "
                f"different Redis Cluster hash slots; use a prefix without '{{' and '}}'"
            )
        self._owns_client = client is None
        self._client: redis.Redis | None = client
        self._topology: Topology | None = (
            None if client is not None else topology(self.url, self.options)
        )
        self._closeables: list[Any] = []
        self._scripts: dict[str, Any] = {}
        #: Writes are announced with SPUBLISH and the feed uses SSUBSCRIBE (Cluster, Redis >= 7).
        self.sharded = False

    # -- errors retrying cannot fix --------------------------------------------------------------

    def _refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        return (
            self._auth_refusal(exc)
            or self._sentinel_refusal(exc)
            or self._tls_refusal(exc)
            or self._reply_refusal(exc, operation)
        )

    def _auth_refusal(self, exc: BaseException) -> Refusal | None:
        parts = urlsplit(self.url.split(";")[0])
        user = parts.username or "default"
        has_password = parts.password is not None or "password" in parse_qs(parts.query)
        fix = "check the user and password in the backend URL (leaderfeed_backend)"
        if isinstance(exc, redis.exceptions.AuthenticationWrongNumberOfArgsError):
            return Refusal(
                f"the store takes a password but no user name (Redis < 6), and the URL names "
                f"user {user!r}",
                "drop the user name from the backend URL, keeping the colon and password",
            )
        if isinstance(exc, _AUTH_ERRORS):
            if not has_password:
                return Refusal(
                    "the store requires a password and the backend URL gives none",
                    "add the password to the backend URL (leaderfeed_backend)",
                )
            if "without any password configured" in str(exc):
                return Refusal(
                    "the backend URL gives a password but the store has none set",
                    "remove the password from the backend URL or set one in the store",
                )
            return Refusal(f"the store refused the password for user {user!r}", fix)
        if isinstance(exc, redis.exceptions.NoPermissionError):
            return Refusal(
                f"the store denies user {user!r} a command or key leaderfeed needs",
                f"grant it EVAL, EVALSHA, SCRIPT, PING, INFO, HGETALL, PUBLISH and SUBSCRIBE "
                f"on the keys and channels {self.record_key.rsplit(':', 1)[0]}:*",
            )
        return None

    def _sentinel_refusal(self, exc: BaseException) -> Refusal | None:
        if isinstance(exc, RedisClusterException) and "not enabled" in str(exc):
            return Refusal(
                "the server is not part of a Redis Cluster (cluster mode is not enabled)",
                "use redis:// (or sentinel://) instead of redis+cluster:// for it",
            )
        if not isinstance(exc, MasterNotFoundError) or self._topology is None:
            return None
        known = self._topology.unknown_master()
        if known is None:  # no sentinel answered: an outage, retried as one
            return None
        return Refusal(
            f"no sentinel at {self._topology.places} monitors a master named "
            f"{self._topology.master_name!r} (they monitor: {known or 'nothing'})",
            "set master_name (broker_transport_options, result_backend_transport_options or "
            "leaderfeed_backend_options) to the name in the sentinels' 'sentinel monitor' line",
        )

    def _tls_refusal(self, exc: BaseException) -> Refusal | None:
        tls = self._uses_tls()
        for link in _chain(exc):
            if isinstance(link, ssl.SSLCertVerificationError):
                return Refusal(
                    f"the store's TLS certificate was not accepted "
                    f"({getattr(link, 'verify_message', None) or link})",
                    _TLS_FIX,
                )
            if isinstance(link, ssl.SSLError):
                return Refusal(
                    f"TLS with the store failed ({getattr(link, 'reason', None) or link})",
                    "use rediss:// only for a TLS port and redis:// for a plain one, and check "
                    "the certificate files given (ssl_certfile, ssl_keyfile)",
                )
            if tls and "handshake" in str(link):
                # A plain Redis waits for a command line and never answers a TLS hello.
                return Refusal(
                    "the store did not answer the TLS handshake (a plain, non-TLS server?)",
                    "use redis:// instead of rediss:// in the backend URL if the server has no "
                    "TLS (and no broker_use_ssl when the backend is the broker)",
                )
        closed = ("Connection closed by server", "Connection reset by peer")
        if (
            not tls
            and isinstance(exc, redis.exceptions.ConnectionError)
            and any(words in str(exc) for words in closed)
            and self._tls_port()
        ):
            return Refusal(
                "the store speaks TLS and the backend URL does not (a TLS-only port?)",
                "use rediss:// in the backend URL, or broker_use_ssl when the backend is the "
                "broker",
            )
        return None

    def _uses_tls(self) -> bool:
        if self._topology is not None:
            return self._topology.url.startswith("rediss") or bool(
                self._topology.connection.get("ssl")
            )
        return False

    def _tls_port(self) -> bool:
        """Whether the (single) server's port completes a TLS handshake: asked only after a
        plain connection was closed on us, to tell a TLS port from an outage."""
        if self._topology is None or self._topology.kind != "server":
            return False
        parts = urlsplit(self._topology.url)
        if not parts.hostname:
            return False
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((parts.hostname, parts.port or 6379), 0.5) as sock,
                context.wrap_socket(sock),
            ):
                return True
        except OSError:
            return False

    def _reply_refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        if not isinstance(exc, redis.ResponseError) or isinstance(exc, _TRANSIENT_REPLIES):
            return None
        found = str(exc)
        if found.startswith(_TRANSIENT_CODES):
            return None
        if "WRONGTYPE" in found:
            if "schedule" in operation:
                key, kind = self.schedule_key, "a hash"
            elif "mark" in operation:
                key, kind = f"{self.mark_prefix}...", "a string"
            else:
                key, kind = self.record_key, "a string"
            return Refusal(
                f"key {key!r} holds another type of value than leaderfeed keeps there ({kind})",
                "delete that key (it holds only leaderfeed's state) or give this election "
                "another name or key_prefix",
            )
        if "DB index" in found:
            if self._topology is not None:
                database = self._topology.database
            else:
                pool = getattr(self._client, "connection_pool", None)
                database = pool.connection_kwargs.get("db") if pool is not None else "?"
            return Refusal(
                f"the store has no database {database}",
                "use a database number below the store's 'databases' setting in the backend URL",
            )
        if "unknown command" in found:
            return Refusal(
                "the store does not know a command leaderfeed needs",
                "use Redis >= 5 with Lua scripting and pub/sub",
            )
        if "wait_replicas" in operation:
            return None
        return Refusal("the store rejected a command", "see the store's reply that follows")

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise BackendUnavailable(f"{self!r} is closed")
        return self._client

    def feed_client(self) -> redis.Redis:
        """The client whose ``pubsub()`` carries the feed: on a Cluster, the node that owns
        the election's slot (sharded pub/sub lives there)."""
        client = self.client
        if not _is_cluster(client):
            return client
        node = cast(Any, client).get_node_from_key(self.channel)
        return cast(redis.Redis, node.redis_connection)

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._client is None:
            assert self._topology is not None
            self._client, self._closeables = self._topology.client(
                timeout=self.timeout, client_name=f"leaderfeed:{self.name}"
            )
        client = self.client
        client.ping()
        publish: Publish = "PUBLISH"
        self.sharded = _is_cluster(client) and self._major_version() >= 7
        if self.sharded:
            publish = "SPUBLISH"
        if self.wait_replicas:
            publish = None  # announced by _acknowledged, once WAIT has counted the replicas
        self._scripts = {
            name: client.register_script(source) for name, source in scripts(publish).items()
        }

    def _major_version(self) -> int:
        info = cast(Mapping[str, Any], self.feed_client().info("server"))
        return int(str(info.get("redis_version", "0")).split(".")[0])

    def _create(self) -> None:
        pass  # keys and channels need no set-up

    def _close(self) -> None:
        client, self._client = self._client, None
        closeables, self._closeables = self._closeables, []
        if client is not None and self._owns_client:
            client.close()
        for closeable in closeables:
            closeable.close()

    # -- the record ----------------------------------------------------------------------------

    def _read(self) -> Observation:
        return self._run("read", keys=[self.record_key]).observation

    def _script(self, name: str) -> Any:
        """The registered script ``name``; none before a connect succeeded."""
        script = self._scripts.get(name)
        if script is None:
            raise BackendUnavailable(f"{self!r} is not connected")
        return script

    def _run(self, script: str, keys: list[str], args: tuple[object, ...] = ()) -> WriteResult:
        # ``doubt``: whether the record the script found was suspect. A write that went ahead
        # replaced it (only a claim may) and stored a record of the current history.
        if self.wait_replicas and script != "read":
            reply = self._acknowledged(script, keys, args)
        else:
            reply = self._script(script)(keys=keys, args=list(args))
        ok, raw, store_time, doubt = reply
        store_clock = float(text(store_time) or "nan")
        if ok:
            return WriteResult(True, observation(raw, store_clock), over_suspect=bool(doubt))
        return WriteResult(False, observation(raw, store_clock, bool(doubt)))

    def _acknowledged(self, script: str, keys: list[str], args: tuple[object, ...]) -> Any:
        """Run ``script`` and ``WAIT`` in one pipeline on one connection; a write that fewer
        than ``wait_replicas`` replicas acknowledged raises BackendUnavailable (not acted on,
        not announced)."""
        target = self.feed_client()  # on a Cluster, the node that owns the keys
        wait_ms = max(1, int(self.timeout * 500))
        pipe = target.pipeline(transaction=False)
        self._script(script)(keys=keys, args=list(args), client=pipe)
        cast(Any, pipe).execute_command("WAIT", self.wait_replicas, wait_ms)
        reply, acknowledged = pipe.execute()
        if script == "mark_once":
            # nil: this call set the mark; its own value: it wrote it again (a retry)
            written = reply is None or text(reply) == args[0]
        else:
            written = reply if script == "write_entry" else reply[0]
        if written and int(acknowledged) < self.wait_replicas:
            raise BackendUnavailable(
                f"{script}: the write reached the master but {acknowledged} of "
                f"{self.wait_replicas} replica(s) acknowledged it within {wait_ms} ms "
                f"(wait_replicas); not acted on"
            )
        if written and script not in ("write_entry", "mark_once"):
            command = "SPUBLISH" if self.sharded else "PUBLISH"
            cast(Any, target).execute_command(command, self.channel, reply[1])
        return reply

    def _write(self, script: str, *args: object) -> WriteResult:
        self.follow_master()
        return self._run(script, [self.record_key], (self.channel, *args))

    def follow_master(self) -> tuple[str, int] | None:
        """Behind Sentinel: ask the sentinels where the master is now (the latest epoch) and,
        if it moved, drop the connections to the old one; the address, else None.

        Called before every write, after the engine noted when it sent it: a lease granted by
        the old master was sent before the sentinels' switch, and so ends before any lease the
        new master grants (whose claim comes after the switch and is acted on one election
        timeout later). Without it a member kept writing to the old master - still a master for
        about ten seconds after ``SENTINEL FAILOVER`` - while others claimed on the new one.
        """
        pool = getattr(self.client, "connection_pool", None)
        if self._topology is None or self._topology.kind != "sentinel" or pool is None:
            return None
        return cast("tuple[str, int]", pool.get_master_address())

    def _claim(
        self, expected_version: int, holder: str, token: str, min_term: int, min_version: int
    ) -> WriteResult:
        return self._write("claim", expected_version, holder, token, min_term, min_version)

    def _renew(self, term: int, token: str) -> WriteResult:
        return self._write("renew", term, token)

    def _resign(self, term: int, token: str, nominee: str | None) -> WriteResult:
        return self._write("resign", term, token, nominee or "")

    def _nominate(self, expected_version: int, nominee: str) -> WriteResult:
        return self._write("nominate", expected_version, nominee)

    # -- schedule state ------------------------------------------------------------------------

    def _read_entries(self) -> dict[str, str]:
        # Older redis-py types the reply as "dict or Awaitable"; a sync client returns the dict.
        stored = cast("Mapping[bytes | str, bytes | str]", self.client.hgetall(self.schedule_key))
        return {text(key) or "": text(value) or "" for key, value in stored.items()}

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        has_expected = "0" if expected is None else "1"
        self.follow_master()
        keys = [self.record_key, self.schedule_key]
        args = (term, token, entry, has_expected, expected or "", new)
        if self.wait_replicas:
            return bool(self._acknowledged("write_entry", keys, args))
        return bool(self._script("write_entry")(keys=keys, args=list(args)))

    # -- once-only marks -----------------------------------------------------------------------

    def _mark_once(self, key: str, value: str, ttl: float) -> str | None:
        # One string key per mark, expired by Redis itself (PX), in the election's hash slot.
        self.follow_master()
        keys = [self.mark_prefix + key]
        args = (value, max(1, math.ceil(ttl * 1000)))
        if self.wait_replicas:
            held = self._acknowledged("mark_once", keys, args)
        else:
            held = self._script("mark_once")(keys=keys, args=list(args))
        return text(held)

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        return RedisSubscription(self)
