"""Connections of the PostgreSQL backend: URLs, options, bounded connections, refusals."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from ...errors import ConfigurationError
from ...urls import url_scheme
from ..base import Refusal

__all__ = [
    "CREATE_LOCK",
    "DB_SCHEMES",
    "DEFAULT_SCHEMA",
    "DEFAULT_TABLE",
    "SCHEMES",
    "connect",
    "flag_option",
    "identifier_option",
    "libpq_url",
    "refusal_of",
]

DEFAULT_SCHEMA = "public"
DEFAULT_TABLE = "leaderfeed"
#: Unquoted-style identifiers only: no quoting surprises, no case folding to explain. The
#: schedule table adds ``_schedule`` (9 characters) within PostgreSQL's 63.
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,53}")
#: Serialises table creation across members (pg_advisory_xact_lock's key).
CREATE_LOCK = int.from_bytes(
    hashlib.sha256(b"celery_leaderfeed:create").digest()[:8], "big", signed=True
)
SCHEMES = ("postgresql", "postgres")
#: Celery's result-backend spellings (SQLAlchemy's ``db+`` and ``+driver``) name the same store.
DB_SCHEMES = ("db+postgresql", "db+postgres", "db+postgresql+psycopg", "db+postgresql+psycopg2")


def libpq_url(url: str) -> str:
    """``url`` as libpq reads it: ``db+postgresql+psycopg2://...`` becomes ``postgresql://...``."""
    scheme = url_scheme(url)
    rest = url.partition("://")[2]
    if scheme.startswith("db+"):
        scheme = scheme[3:].partition("+")[0]
    return f"{scheme}://{rest}"


def identifier_option(options: Mapping[str, Any], key: str, default: str) -> str:
    value = options.get(key, default)
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"option {key!r} must be a PostgreSQL name of 1-54 lower-case letters, digits and "
            f"underscores, not starting with a digit; got {value!r}"
        )
    return value


def flag_option(options: Mapping[str, Any], key: str) -> bool:
    """A yes/no option: a bool, or the words a URL query or environment variable carries."""
    value = options.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "yes", "on", "1"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "no", "off", "0", ""}:
        return False
    raise ConfigurationError(f"option {key!r} must be true or false; got {value!r}")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def connect(conninfo: str, *, name: str, timeout: float) -> psycopg.Connection[Any]:
    """A new autocommit connection whose every call is bounded by ``timeout``:
    ``statement_timeout`` on the server (lock waits included), ``tcp_user_timeout`` and
    keepalives on the socket; connecting takes at least libpq's 2 s."""
    millis = max(1, int(timeout * 1000))
    conn = psycopg.connect(
        conninfo,
        autocommit=True,
        connect_timeout=max(2, math.ceil(timeout)),
        application_name=f"leaderfeed:{name}"[:63],
        tcp_user_timeout=millis,
        keepalives=1,
        keepalives_idle=max(1, int(timeout)),
        keepalives_interval=1,
        keepalives_count=3,
    )
    try:
        conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(millis)))
    except BaseException:
        conn.close()
        raise
    return conn


def refusal_of(
    exc: BaseException, *, user: str, database: str, schema: str, tables: tuple[str, ...]
) -> Refusal | None:
    """What retrying cannot fix in ``exc``, for an operator; None for what may heal."""
    where = f"database {database!r}"
    text = " ".join(str(link) for link in _chain(exc))
    if isinstance(
        exc, pg_errors.InvalidPassword | pg_errors.InvalidAuthorizationSpecification
    ) or any(
        words in text
        for words in ("password authentication failed", "no password supplied", "pg_hba.conf")
    ):
        return Refusal(
            f"the store refused user {user!r} for {where}",
            "check the user and password in the backend URL (leaderfeed_backend) and the "
            "server's pg_hba.conf",
        )
    if isinstance(exc, pg_errors.InvalidCatalogName) or re.search(
        r'database "[^"]*" does not exist', text
    ):
        return Refusal(
            f"the store has no {where}",
            "create it (createdb) or name an existing database in the backend URL",
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return Refusal(
            f"user {user!r} lacks a privilege leaderfeed needs in {where}",
            f"grant it USAGE (and CREATE, to make them) on schema {schema!r} and "
            f"SELECT, INSERT, UPDATE on {', '.join(tables[:-1])} and SELECT, INSERT, UPDATE, "
            f"DELETE on {tables[-1]} (the marks)",
        )
    if "statement pooling mode" in text:
        return Refusal(
            "a statement-pooling proxy (PgBouncer pool_mode=statement) runs no transaction "
            f"for {where}",
            "connect directly or through session or transaction pooling",
        )
    if isinstance(exc, pg_errors.UndefinedColumn | pg_errors.InvalidColumnReference):
        return Refusal(
            f"table {' or '.join(tables)} has another layout than leaderfeed's",
            "drop it or name another table with the 'table' option",
        )
    return None  # e.g. a read-only standby: it may be promoted, the URL may move on
