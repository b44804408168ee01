"""In-memory databases and tables (nothing is persisted: a restart loses everything)."""

from __future__ import annotations

import functools
import re
import uuid
from typing import Any, Protocol

from .protocol import QueryError, op_failed
from .values import primary_key_of, reql_cmp, reql_eq

SERVER_NAME = "rethinkdb_wire"
_NAME = re.compile(r"[A-Za-z0-9_-]+")
TABLE_UNAVAILABLE = "Changefeed aborted (table unavailable)."


class Subscriber(Protocol):
    def on_change(self, key: Any, old: Any, new: Any) -> None: ...
    def on_abort(self, message: str) -> None: ...


class Table:
    def __init__(self, db: str, name: str, primary_key: str) -> None:
        self.id = str(uuid.uuid4())
        self.db = db
        self.name = name
        self.primary_key = primary_key
        self.docs: dict[Any, dict] = {}  # primary_key_of(pk) -> document
        self.subscribers: set[Subscriber] = set()

    @property
    def full_name(self) -> str:
        return f"{self.db}.{self.name}"

    def get(self, pk: Any) -> dict | None:
        return self.docs.get(primary_key_of(pk))

    def rows(self) -> list[dict]:
        """All documents in primary-key order, like a table scan on the real server."""
        order = functools.cmp_to_key(reql_cmp)
        return sorted(self.docs.values(), key=lambda doc: order(doc[self.primary_key]))

    def write(self, pk: Any, old: dict | None, new: dict | None) -> None:
        """Store ``new`` (None deletes) and tell changefeeds, unless nothing changed."""
        if reql_eq(old, new):
            return
        key = primary_key_of(pk)
        if new is None:
            self.docs.pop(key, None)
        else:
            self.docs[key] = new
        for subscriber in list(self.subscribers):
            subscriber.on_change(key, old, new)

    def config(self) -> dict:
        return {
            "db": self.db,
            "durability": "hard",
            "id": self.id,
            "indexes": [],
            "name": self.name,
            "primary_key": self.primary_key,
            "shards": [
                {
                    "nonvoting_replicas": [],
                    "primary_replica": SERVER_NAME,
                    "replicas": [SERVER_NAME],
                }
            ],
            "write_acks": "majority",
            "write_hook": None,
        }

    def close_feeds(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber.on_abort(TABLE_UNAVAILABLE)
        self.subscribers.clear()


class Store:
    def __init__(self) -> None:
        self.dbs: dict[str, dict[str, Table]] = {"test": {}}
        self.db_ids: dict[str, str] = {"test": str(uuid.uuid4())}

    @staticmethod
    def _check_name(kind: str, name: Any) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise QueryError(f"{kind} name `{name}` invalid (Use A-Z, a-z, 0-9, _ and - only).")
        return name

    def db(self, name: str) -> dict[str, Table]:
        if name not in self.dbs:
            raise op_failed(f"Database `{name}` does not exist.")
        return self.dbs[name]

    def table(self, db: str, name: str) -> Table:
        tables = self.db(db)
        if name not in tables:
            raise op_failed(f"Table `{db}.{name}` does not exist.")
        return tables[name]

    def db_create(self, name: str) -> dict:
        self._check_name("Database", name)
        if name in self.dbs:
            raise op_failed(f"Database `{name}` already exists.")
        self.dbs[name] = {}
        self.db_ids[name] = str(uuid.uuid4())
        return {
            "dbs_created": 1,
            "config_changes": [
                {"old_val": None, "new_val": {"id": self.db_ids[name], "name": name}}
            ],
        }

    def db_drop(self, name: str) -> dict:
        tables = self.db(name)
        for table in tables.values():
            table.close_feeds()
        del self.dbs[name]
        return {
            "dbs_dropped": 1,
            "tables_dropped": len(tables),
            "config_changes": [
                {"old_val": {"id": self.db_ids.pop(name), "name": name}, "new_val": None}
            ],
        }

    def table_create(self, db: str, name: str, primary_key: str) -> dict:
        self._check_name("Table", name)
        tables = self.db(db)
        if name in tables:
            raise op_failed(f"Table `{db}.{name}` already exists.")
        table = tables[name] = Table(db, name, primary_key)
        return {
            "tables_created": 1,
            "config_changes": [{"old_val": None, "new_val": table.config()}],
        }

    def table_drop(self, db: str, name: str) -> dict:
        table = self.table(db, name)
        table.close_feeds()
        del self.dbs[db][name]
        return {
            "tables_dropped": 1,
            "config_changes": [{"old_val": table.config(), "new_val": None}],
        }
