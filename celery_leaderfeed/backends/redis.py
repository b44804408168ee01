"""Redis backend (``redis://``, ``rediss://``, ``unix://``): a key, Lua scripts and pub/sub.

The record is a JSON string under ``leaderfeed:{NAME}:leader``; every write is one Lua script
that checks and writes the record atomically, takes its timestamp from Redis's ``TIME`` and
publishes the new record on ``leaderfeed:{NAME}:events``. Pub/sub is at-most-once, so the
engine never relies on it for safety: it is only the fast path that tells followers a leader
resigned or changed. Needs Redis >= 5 (scripts replicated by effects, so ``TIME`` is allowed).

Every write stamps the record with the server's history, ``run_id/master_replid`` read with
``INFO`` inside the script: a restart (from an RDB or AOF file that may predate the last
writes) changes the run id, a promoted replica has a new replication id. A record stamped with
another history is *suspect* (``Observation.suspect``): it may be an earlier state than the one
members acted on, so only a claim may replace it, and that claim is acted on one election
timeout later.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import BackendUnavailable, ConfigurationError
from ..record import Observation, WriteResult, decode_record
from ..urls import MISREAD_USERINFO, misread_userinfo, url_error
from .base import Backend, FeedEvent, RecordChanged, Refusal, Subscription
from .transitions import CLOCK_LAG_MS

__all__ = ["RedisBackend"]

# Shared by every script: load(key) returns the decoded record (or nil) and its version as the
# engine counts it: 0 when the key is missing, -1 when it holds anything that is not a record.
# The checks mirror celery_leaderfeed.record.decode_record.
_PRELUDE = """
local FORMAT = 'leaderfeed/1'
local function str_or_null(v) return v == nil or v == cjson.null or type(v) == 'string' end
local function count(v) return type(v) == 'number' and v >= 1 and math.floor(v) == v end
-- Returns the record (or nil), its version and what to report: the raw value, or the key's
-- type when it is not a string.
local function load(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return nil, 0, false end
  if kind ~= 'string' then return nil, -1, 'type:' .. kind end
  local raw = redis.call('GET', key)
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or rec['format'] ~= FORMAT then return nil, -1, raw end
  if not (count(rec['term']) and count(rec['version'])) then return nil, -1, raw end
  if not (str_or_null(rec['holder']) and str_or_null(rec['token'])
          and str_or_null(rec['nominee'])) then return nil, -1, raw end
  local no_holder = rec['holder'] == nil or rec['holder'] == cjson.null
  local no_token = rec['token'] == nil or rec['token'] == cjson.null
  if no_holder ~= no_token then return nil, -1, raw end
  local at = rec['renewed_at']
  if not (at == nil or at == cjson.null or type(at) == 'number') then return nil, -1, raw end
  return rec, rec['version'], raw
end
-- Whole milliseconds: cjson keeps 14 significant digits, so finer times would be rounded
-- in the stored record and no longer match the term minted from them.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function now() return now_ms() / 1000 end
-- This server's history: a restart changes the run id, a promotion the replication id.
local here_cached
local function here()
  if not here_cached then
    local server = redis.call('INFO', 'server')
    local replication = redis.call('INFO', 'replication')
    here_cached = (string.match(server, 'run_id:(%x+)') or '?') .. '/'
      .. (string.match(replication, 'master_replid:(%x+)') or '?')
  end
  return here_cached
end
-- 1 when the record was written under another history (it may have been rolled back).
local function suspect(rec)
  if rec and rec['history'] ~= here() then return 1 end
  return 0
end
local function store(key, channel, rec)
  rec['format'] = FORMAT
  rec['history'] = here()
  local raw = cjson.encode(rec)
  redis.call('SET', key, raw)
  redis.call('PUBLISH', channel, raw)
  return raw
end
local function null_if_empty(v) if v == '' then return cjson.null end return v end
"""

# Every script on the record returns {ok, record or 'type:KIND' or false, time, doubt}: doubt is
# 1 when the record found was suspect (a claim that went ahead replaced it).

# KEYS[1] record.
_READ = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
return {0, raw, tostring(now()), suspect(rec)}
"""
)

# KEYS[1] record; ARGV channel, expected version, holder, token, min term, min version.
# Take the record if its version is still the one the claimer saw (transitions.claimed).
_CLAIM = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
local fresh = now_ms()
local t = fresh / 1000
local doubt = suspect(rec)
if version ~= tonumber(ARGV[2]) then return {0, raw, tostring(t), doubt} end
-- Over an empty store or a suspect record term and version start at the clock in ms, and they
-- never fall further than LAG below it: they rise even after a loss or a rollback.
local floor = fresh
if rec and doubt == 0 then floor = fresh - LAG end
local written = store(KEYS[1], ARGV[1], {
  holder = ARGV[3], token = ARGV[4], nominee = cjson.null, renewed_at = t,
  term = math.max(rec and (rec['term'] + 1) or fresh, floor, tonumber(ARGV[5])),
  version = math.max(rec and (version + 1) or fresh, floor, tonumber(ARGV[6]))})
return {1, written, tostring(t), doubt}
"""
).replace("LAG", str(CLOCK_LAG_MS))

# KEYS[1] record; ARGV channel, term, token. Extend the lease of the holder of that term.
_RENEW = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
local t = now()
local doubt = suspect(rec)
if not rec or doubt == 1 or rec['term'] ~= tonumber(ARGV[2]) or rec['token'] ~= ARGV[3] then
  return {0, raw, tostring(t), doubt}
end
rec['version'] = version + 1
rec['renewed_at'] = t
if rec['nominee'] == rec['holder'] then rec['nominee'] = cjson.null end
return {1, store(KEYS[1], ARGV[1], rec), tostring(t), 0}
"""
)

# KEYS[1] record; ARGV channel, term, token, nominee ('' for none). Leave the record vacant.
_RESIGN = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
local t = now()
local doubt = suspect(rec)
if not rec or doubt == 1 or rec['term'] ~= tonumber(ARGV[2]) or rec['token'] ~= ARGV[3] then
  return {0, raw, tostring(t), doubt}
end
return {1, store(KEYS[1], ARGV[1], {
  holder = cjson.null, token = cjson.null, nominee = null_if_empty(ARGV[4]),
  term = rec['term'], version = version + 1, renewed_at = t}), tostring(t), 0}
"""
)

# KEYS[1] record; ARGV channel, expected version, nominee. Ask for a new leader.
_NOMINATE = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
local t = now()
local doubt = suspect(rec)
if not rec or doubt == 1 or version ~= tonumber(ARGV[2]) then
  return {0, raw, tostring(t), doubt}
end
rec['nominee'] = ARGV[3]
rec['version'] = version + 1
rec['renewed_at'] = t
return {1, store(KEYS[1], ARGV[1], rec), tostring(t), 0}
"""
)

# KEYS[1] record, KEYS[2] schedule hash; ARGV term, token, entry, has expected ('1'/'0'),
# expected, new. Write one entry only while term/token hold the record. -> 1 or 0
_WRITE_ENTRY = (
    _PRELUDE
    + """
local rec = load(KEYS[1])
if not rec or suspect(rec) == 1 then return 0 end
if rec['term'] ~= tonumber(ARGV[1]) or rec['token'] ~= ARGV[2] then return 0 end
local stored = redis.call('HGET', KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  if stored ~= ARGV[5] then return 0 end
elseif stored then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[6])
return 1
"""
)


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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (redis-py wraps socket errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _text(value: object) -> str | None:
    if value is None or value is False:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _observation(raw: object, store_time: float | None, suspect: bool = False) -> Observation:
    text = _text(raw)
    if text is None:
        return Observation(None, store_time=store_time)
    if text.startswith("type:"):  # the key holds a hash, list, ...: not ours
        return Observation(None, corrupt=True, store_time=store_time)
    try:
        return Observation(decode_record(text), store_time=store_time, suspect=suspect)
    except ValueError:
        return Observation(None, corrupt=True, store_time=store_time)


class RedisBackend(Backend):
    """Backend for ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) and
    ``unix:///path/to/socket?db=N``.

    Options: ``key_prefix`` (default ``"leaderfeed"``); ``client``, an existing
    :class:`redis.Redis` to use instead of one built from the URL (it is not closed).
    """

    schemes = ("redis", "rediss", "unix")
    connection_errors = (redis.RedisError, OSError)
    option_names = frozenset({"key_prefix", "client"})

    def _configure(self) -> None:
        prefix = self.options.get("key_prefix", "leaderfeed")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError(
                f"option 'key_prefix' must be a non-empty string, got {prefix!r}"
            )
        client = self.options.get("client")
        if client is not None and not isinstance(client, redis.Redis):
            raise ConfigurationError(
                f"option 'client' must be a redis.Redis, got {type(client).__name__}"
            )
        # The braces are a Redis Cluster hash tag: all keys of one election share a slot.
        base = f"{prefix}:{{{self.name}}}"
        self.record_key = f"{base}:leader"
        self.schedule_key = f"{base}:schedule"
        self.channel = f"{base}:events"
        self._owns_client = client is None
        self._client: redis.Redis | None = client
        if client is None:
            if misread_userinfo(self.url):  # redis-py would send a piece of it to the "host"
                raise ConfigurationError(
                    f"invalid Redis URL {self.display_url!r}: {MISREAD_USERINFO}"
                )
            try:
                # Parse now so a malformed URL fails at construction, not in a thread later.
                self._client = self._build_client()
            except ValueError as exc:
                raise ConfigurationError(
                    f"invalid Redis URL {self.display_url!r}: {url_error(self.url, exc)}"
                ) from None
        self._scripts: dict[str, Any] = {}

    # -- errors retrying cannot fix --------------------------------------------------------------

    def _refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        return (
            self._auth_refusal(exc) or self._tls_refusal(exc) or self._reply_refusal(exc, operation)
        )

    def _auth_refusal(self, exc: BaseException) -> Refusal | None:
        parts = urlsplit(self.url)
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

    def _tls_refusal(self, exc: BaseException) -> Refusal | None:
        for link in _chain(exc):
            if isinstance(link, ssl.SSLCertVerificationError):
                return Refusal(
                    f"the store's TLS certificate was not accepted "
                    f"({getattr(link, 'verify_message', None) or link})",
                    "name the CA that signed it with ?ssl_ca_certs=/path/ca.pem in the backend URL",
                )
            if isinstance(link, ssl.SSLError):
                return Refusal(
                    f"TLS with the store failed ({getattr(link, 'reason', None) or link})",
                    "use rediss:// only for a TLS port and redis:// for a plain one",
                )
            if urlsplit(self.url).scheme == "rediss" and "handshake" in str(link):
                # A plain Redis waits for a command line and never answers a TLS hello.
                return Refusal(
                    "the store did not answer the TLS handshake (a plain, non-TLS server?)",
                    "use redis:// instead of rediss:// in the backend URL if the server has no TLS",
                )
        return None

    def _reply_refusal(self, exc: BaseException, operation: str) -> Refusal | None:
        if not isinstance(exc, redis.ResponseError) or isinstance(exc, _TRANSIENT_REPLIES):
            return None
        text = str(exc)
        if text.startswith(_TRANSIENT_CODES):
            return None
        if "WRONGTYPE" in text:
            key, kind = (
                (self.schedule_key, "a hash")
                if "schedule" in operation
                else (self.record_key, "a string")
            )
            return Refusal(
                f"key {key!r} holds another type of value than leaderfeed keeps there ({kind})",
                "delete that key (it holds only leaderfeed's state) or give this election "
                "another name or key_prefix",
            )
        if "DB index" in text:
            client = self._client
            database = client.connection_pool.connection_kwargs.get("db") if client else "?"
            return Refusal(
                f"the store has no database {database}",
                "use a database number below the store's 'databases' setting in the backend URL",
            )
        if "unknown command" in text:
            return Refusal(
                "the store does not know a command leaderfeed needs",
                "use Redis >= 5 with Lua scripting and pub/sub",
            )
        return Refusal("the store rejected a command", "see the store's reply that follows")

    def _build_client(self) -> redis.Redis:
        # Annotated: under some redis-py releases mypy sees the class as Any.
        client: redis.Redis = redis.Redis.from_url(
            self.url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # Fail fast and visibly: the engine decides when to retry, and a silent reconnect
            # of the pub/sub connection would lose messages without anyone noticing.
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            client_name=f"leaderfeed:{self.name}",
        )
        return client

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise BackendUnavailable(f"{self!r} is closed")
        return self._client

    # -- lifecycle -----------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._client is None:
            self._client = self._build_client()
        client = self.client
        client.ping()
        self._scripts = {
            "read": client.register_script(_READ),
            "claim": client.register_script(_CLAIM),
            "renew": client.register_script(_RENEW),
            "resign": client.register_script(_RESIGN),
            "nominate": client.register_script(_NOMINATE),
            "write_entry": client.register_script(_WRITE_ENTRY),
        }

    def _create(self) -> None:
        pass  # keys and channels need no set-up

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            cast(_Closeable, client).close()  # unannotated before redis-py 6

    # -- the record ----------------------------------------------------------------------------

    def _read(self) -> Observation:
        return self._run("read", keys=[self.record_key]).observation

    def _run(self, script: str, keys: list[str], args: tuple[object, ...] = ()) -> WriteResult:
        # ``doubt``: whether the record the script found was suspect. A write that went ahead
        # replaced it (only a claim may) and stored a record of the current history.
        ok, raw, store_time, doubt = self._scripts[script](keys=keys, args=list(args))
        store_clock = float(_text(store_time) or "nan")
        if ok:
            return WriteResult(True, _observation(raw, store_clock), over_suspect=bool(doubt))
        return WriteResult(False, _observation(raw, store_clock, bool(doubt)))

    def _write(self, script: str, *args: object) -> WriteResult:
        return self._run(script, [self.record_key], (self.channel, *args))

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
        return {_text(key) or "": _text(value) or "" for key, value in stored.items()}

    def _write_entry(
        self, term: int, token: str, entry: str, expected: str | None, new: str
    ) -> bool:
        has_expected = "0" if expected is None else "1"
        written = self._scripts["write_entry"](
            keys=[self.record_key, self.schedule_key],
            args=[term, token, entry, has_expected, expected or "", new],
        )
        return bool(written)

    # -- the feed ------------------------------------------------------------------------------

    def _subscribe(self) -> Subscription:
        return _RedisSubscription(self)


class _Closeable(Protocol):
    def close(self) -> None: ...


class _PubSub(_Closeable, Protocol):
    """What is used of redis-py's ``PubSub``, typed the same under every supported release
    (older releases leave ``Redis.pubsub()`` and most ``PubSub`` methods unannotated)."""

    def subscribe(self, *channels: str) -> object: ...

    def get_message(self, *, timeout: float) -> dict[str, Any] | None: ...

    def ping(self, message: str) -> object: ...


class _RedisSubscription(Subscription):
    """Pub/sub on the election's channel, with its own PING to notice a silent connection."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._pubsub = cast("Callable[[], _PubSub]", backend.client.pubsub)()
        self._ping_every = max(backend.timeout, 0.5)
        self._ping_sent_at: float | None = None
        self._ping_payload = uuid.uuid4().hex
        self._closed = False
        try:
            self._pubsub.subscribe(backend.channel)
            self._await_confirmation()
        except BaseException:
            self._pubsub.close()
            raise
        self._heard_at = time.monotonic()

    def _await_confirmation(self) -> None:
        # The engine reads the record right after subscribing; the subscription must be live
        # by then or a write in between would be missed.
        deadline = time.monotonic() + self._backend.timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == "subscribe":
                return
        raise BackendUnavailable("Redis did not confirm the subscription in time")

    def poll(self, timeout: float) -> list[FeedEvent]:
        if self._closed:
            raise BackendUnavailable("the change feed is closed")
        with self._backend.mapped_errors("change feed"):
            self._check_alive()
            events: list[FeedEvent] = []
            message = self._pubsub.get_message(timeout=timeout)
            while message is not None:
                self._heard_at = time.monotonic()
                if message["type"] == "pong":
                    self._ping_sent_at = None
                elif message["type"] == "message":
                    events.append(RecordChanged(_observation(message["data"], None)))
                message = self._pubsub.get_message(timeout=0)
            return events

    def _check_alive(self) -> None:
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > self._backend.timeout:
                raise BackendUnavailable("the pub/sub connection stopped answering PING")
        elif now - self._heard_at > self._ping_every:
            self._pubsub.ping(self._ping_payload)
            self._ping_sent_at = now

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):  # the connection may already be gone
            self._pubsub.close()
