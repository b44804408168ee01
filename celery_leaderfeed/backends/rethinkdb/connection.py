"""Connections of the RethinkDB backend: URLs, and calls bounded by kernel socket timeouts."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from typing import Any
from urllib.parse import unquote, urlsplit

from rethinkdb.errors import ReqlError

from ...errors import ConfigurationError
from ...urls import MISREAD_USERINFO, misread_userinfo, url_error

DEFAULT_PORT = 28015
DEFAULT_DB = "leaderfeed"
DEFAULT_TABLE = "leaderfeed"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # RethinkDB's database and table names


def parse_url(url: str, shown: str) -> tuple[str, int, str, str, str]:
    """host, port, user, password, database of a ``rethinkdb://`` URL (``shown``: redacted)."""
    if misread_userinfo(url):  # urlsplit would take a piece of the password for the host
        raise ConfigurationError(f"invalid RethinkDB URL {shown!r}: {MISREAD_USERINFO}")
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid RethinkDB URL {shown!r}: {url_error(url, exc)}"
        ) from None
    if parts.query or parts.fragment:
        # A '?' or '#' left unencoded in the password lands here too: say so, never show it.
        problem = url_error(url, ValueError("it takes no query string or fragment"))
        raise ConfigurationError(f"invalid RethinkDB URL {shown!r}: {problem}")
    db = unquote(parts.path.strip("/")) or DEFAULT_DB
    if not NAME_PATTERN.fullmatch(db):
        problem = url_error(url, ValueError(f"the database must be a RethinkDB name: {db!r}"))
        raise ConfigurationError(f"invalid RethinkDB URL {shown!r}: {problem}")
    user = unquote(parts.username) if parts.username else "admin"
    password = unquote(parts.password) if parts.password else ""
    return parts.hostname or "localhost", port, user, password, db


def socket_of(conn: Any) -> socket.socket:
    # The driver offers no handle on its socket (2.4.x: Connection._instance._socket._socket);
    # this is the one place that reaches for it, and it fails loudly if the layout changes.
    sock = getattr(getattr(getattr(conn, "_instance", None), "_socket", None), "_socket", None)
    if not isinstance(sock, socket.socket):
        raise ConfigurationError(
            "cannot find the rethinkdb driver's socket to bound calls by the timeout "
            "(this backend is tested with rethinkdb 2.4.10)"
        )
    return sock


def bound(sock: socket.socket, seconds: float) -> None:
    """Kernel timeouts for each blocking read and write on ``sock`` (0: none)."""
    whole = int(seconds)
    micros = max(int((seconds - whole) * 1e6), 1 if seconds > 0 and not whole else 0)
    value = struct.pack("ll", whole, micros)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def describe(exc: BaseException) -> str:
    # Not str(exc): for a ReqlError that prints the whole query.
    return f"{type(exc).__name__}: {exc.message if isinstance(exc, ReqlError) else exc}"


def close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):  # it may be broken already; nothing to report
        conn.close(noreply_wait=False)
