"""Which driver errors each backend reports as :class:`StoreRefused` (retrying cannot fix them)
and which as a plain :class:`BackendUnavailable` (they may heal), and what the message says.

The errors are raised inside ``mapped_errors``, the boundary every store call goes through; the
servers' own replies are checked against real servers in ``tests/test_store_errors.py``.
"""

from __future__ import annotations

import ssl

import pytest
import redis
from pymongo.errors import (
    AutoReconnect,
    ConfigurationError,
    OperationFailure,
    ServerSelectionTimeoutError,
)
from rethinkdb.errors import ReqlAuthError, ReqlPermissionError

from celery_leaderfeed.backends import Backend, backend_from_url
from celery_leaderfeed.errors import BackendUnavailable, StoreRefused

SECRET = "Pa55-w0rd-XYZ"


def raised(backend: Backend, operation: str, error: BaseException) -> BackendUnavailable:
    with pytest.raises(BackendUnavailable) as info, backend.mapped_errors(operation):
        raise error
    assert SECRET not in str(info.value)
    return info.value


def caused(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised while handling ``inner``, as redis-py wraps socket and SSL errors."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:  # noqa: BLE001 - handed back to the test
        return exc


REDIS_REFUSED = [
    pytest.param(
        f"redis://:{SECRET}@h:6379/0",
        "connect",
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        "the store refused the password for user 'default' at redis://:***@h:6379/0: "
        "check the user and password in the backend URL (leaderfeed_backend)",
        id="wrong-password",
    ),
    pytest.param(
        f"redis://app:{SECRET}@h:6379/0",
        "connect",
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        "the store refused the password for user 'app'",
        id="wrong-user",
    ),
    pytest.param(
        "redis://h:6379/0",
        "connect",
        redis.AuthenticationError("Authentication required."),
        "the store requires a password and the backend URL gives none",
        id="no-password",
    ),
    pytest.param(
        f"redis://:{SECRET}@h:6379/0",
        "connect",
        redis.AuthenticationError(
            "AUTH <password> called without any password configured for the default user."
        ),
        "the backend URL gives a password but the store has none set",
        id="password-not-set",
    ),
    pytest.param(
        f"redis://app:{SECRET}@h:6379/0",
        "connect",
        redis.exceptions.AuthenticationWrongNumberOfArgsError(
            "wrong number of arguments for 'auth' command"
        ),
        "drop the user name",
        id="user-on-redis-5",
    ),
    pytest.param(
        f"redis://app:{SECRET}@h:6379/0",
        "claim",
        redis.exceptions.NoPermissionError("this user has no permissions to run 'evalsha'"),
        "the store denies user 'app' a command or key leaderfeed needs",
        id="acl",
    ),
    pytest.param(
        f"redis://:{SECRET}@h:6379/0",
        "read schedule state",
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        "key 'leaderfeed:{e}:schedule' holds another type of value than leaderfeed keeps there "
        "(a hash)",
        id="wrongtype",
    ),
    pytest.param(
        f"redis://:{SECRET}@h:6379/99",
        "connect",
        redis.ResponseError("DB index is out of range"),
        "the store has no database 99",
        id="no-such-db",
    ),
    pytest.param(
        f"rediss://:{SECRET}@h:6379/0",
        "connect",
        caused(
            redis.TimeoutError("Timeout connecting to server"),
            TimeoutError("_ssl.c:989: The handshake operation timed out"),
        ),
        "the store did not answer the TLS handshake (a plain, non-TLS server?)",
        id="tls-to-plain",
    ),
    pytest.param(
        f"rediss://:{SECRET}@h:6379/0",
        "connect",
        caused(
            redis.ConnectionError("Error 1 connecting"),
            ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate"),
        ),
        "the store's TLS certificate was not accepted",
        id="tls-certificate",
    ),
]


@pytest.mark.parametrize(("url", "operation", "error", "expected"), REDIS_REFUSED)
def test_redis_errors_retrying_cannot_fix_are_refusals(
    url: str, operation: str, error: BaseException, expected: str
) -> None:
    refused = raised(backend_from_url(url, name="e"), operation, error)
    assert isinstance(refused, StoreRefused)
    assert expected in str(refused)
    assert refused.fix in str(refused) and refused.cause in str(refused)


REDIS_TRANSIENT = [
    pytest.param(redis.ConnectionError("Connection refused"), id="refused-connection"),
    pytest.param(redis.TimeoutError("Timeout reading from socket"), id="timeout"),
    pytest.param(
        caused(redis.ConnectionError("Error while reading"), ConnectionResetError(104, "reset")),
        id="reset",
    ),
    pytest.param(redis.exceptions.BusyLoadingError("Redis is loading"), id="loading"),
    pytest.param(redis.exceptions.ReadOnlyError("You can't write against a replica"), id="ro"),
    pytest.param(
        redis.exceptions.OutOfMemoryError("command not allowed when used memory"), id="oom"
    ),
    pytest.param(redis.ResponseError("BUSY Redis is busy running a script"), id="busy"),
    pytest.param(TimeoutError("timed out"), id="socket-timeout"),
]


@pytest.mark.parametrize("error", REDIS_TRANSIENT)
def test_redis_errors_that_may_heal_stay_unavailable(error: BaseException) -> None:
    backend = backend_from_url(f"rediss://:{SECRET}@h:6379/0", name="e")
    assert type(raised(backend, "claim", error)) is BackendUnavailable


MONGO = [
    pytest.param(
        OperationFailure("Authentication failed.", code=18),
        "the store refused the credentials of user 'bob'",
        id="auth-failed",
    ),
    pytest.param(
        OperationFailure("command find requires authentication", code=13),
        "the store does not allow what leaderfeed needs for user 'bob'",
        id="unauthorized",
    ),
    pytest.param(
        ConfigurationError("Unknown option tlsFoo"),
        "the MongoDB driver rejects the connection settings",
        id="driver-configuration",
    ),
    pytest.param(
        ServerSelectionTimeoutError("SSL handshake failed: h:27017: [SSL] record layer failure"),
        "TLS with the store failed",
        id="tls",
    ),
    pytest.param(ServerSelectionTimeoutError("No servers found yet"), None, id="no-server"),
    pytest.param(AutoReconnect("connection closed"), None, id="reconnect"),
    pytest.param(OperationFailure("interrupted at shutdown", code=11600), None, id="shutdown"),
]


@pytest.mark.parametrize(("error", "expected"), MONGO)
def test_mongodb_refusals(error: BaseException, expected: str | None) -> None:
    backend = backend_from_url(f"mongodb://bob:{SECRET}@h:27017/db", name="e")
    mapped = raised(backend, "read", error)
    if expected is None:
        assert type(mapped) is BackendUnavailable
    else:
        assert isinstance(mapped, StoreRefused) and expected in str(mapped)


RETHINK = [
    pytest.param(
        ReqlAuthError("Wrong password", "h", 28015),
        "the store refused the password for user 'bob'",
        id="password",
    ),
    pytest.param(
        ReqlAuthError("Unknown user", "h", 28015), "the store has no user 'bob'", id="user"
    ),
    pytest.param(
        ReqlPermissionError("User `bob` does not have the required `write` permission.", None),
        "the store does not allow user 'bob' what leaderfeed needs",
        id="permission",
    ),
]


@pytest.mark.parametrize(("error", "expected"), RETHINK)
def test_rethinkdb_refusals(error: BaseException, expected: str) -> None:
    backend = backend_from_url(f"rethinkdb://bob:{SECRET}@h:28015/db", name="e")
    with pytest.raises(StoreRefused) as info, backend._mapped():  # type: ignore[attr-defined]
        raise error
    assert expected in str(info.value) and SECRET not in str(info.value)
