"""INSERT / UPDATE / REPLACE / DELETE with RethinkDB's write-result objects.

Each document is read, transformed and written without anything else running in
between (the evaluator is synchronous), so ``get(k).replace(lambda d: r.branch(..))``
is a real compare-and-set.  An error while computing one document's new value (for
instance ``r.error(..)`` in the function) skips that document and is counted in
``errors`` / ``first_error``, exactly like the real server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from .protocol import QueryError, ResponseType, TermType
from .store import Table
from .values import (
    Func,
    Selection,
    SingleSel,
    TableRef,
    expect,
    merge,
    pretty,
    reql_eq,
    strip_literals,
    type_name,
)

NONDETERMINISTIC = {
    TermType.TABLE,
    TermType.JAVASCRIPT,
    TermType.HTTP,
    TermType.RANDOM,
    TermType.UUID,
    TermType.SAMPLE,
}
NONDETERMINISTIC_MESSAGE = (
    "Could not prove argument deterministic.  Maybe you want to use the non_atomic flag?"
)


def deterministic(term: Any) -> bool:
    """Like RethinkDB: writes may not depend on table reads, r.js, r.uuid, r.random..."""
    if isinstance(term, dict):
        return all(deterministic(value) for value in term.values())
    if isinstance(term, list) and term:
        if term[0] in NONDETERMINISTIC:
            return False
        args = term[1] if len(term) > 1 else []
        optargs = term[2] if len(term) > 2 else {}
        return all(deterministic(arg) for arg in args) and deterministic(optargs)
    return True


class WriteResult:
    def __init__(self, return_changes: Any) -> None:
        self.counts = dict.fromkeys(
            ("deleted", "errors", "inserted", "replaced", "skipped", "unchanged"), 0
        )
        self.return_changes = return_changes
        self.first_error: str | None = None
        self.changes: list[dict] = []
        self.generated_keys: list[str] = []

    def error(self, message: str, old: Any) -> None:
        self.counts["errors"] += 1
        self.first_error = self.first_error or message
        if self.return_changes == "always":
            self.changes.append({"old_val": old, "new_val": old, "error": message})

    def apply(self, table: Table, pk: Any, old: Any, new: Any) -> None:
        if old is None:
            kind = "skipped" if new is None else "inserted"
        elif new is None:
            kind = "deleted"
        else:
            kind = "unchanged" if reql_eq(old, new) else "replaced"
        self.counts[kind] += 1
        table.write(pk, old, new)
        if self.return_changes == "always" or (
            self.return_changes and kind not in ("unchanged", "skipped")
        ):
            self.changes.append({"old_val": old, "new_val": new})

    def to_datum(self) -> dict:
        out: dict[str, Any] = dict(self.counts)
        if self.first_error is not None:
            out["first_error"] = self.first_error
        if self.generated_keys:
            out["generated_keys"] = self.generated_keys
        if self.return_changes:
            out["changes"] = self.changes
        return out


def check_new_doc(table: Table, pk: Any, old: Any, new: Any) -> None:
    if new is None:
        return
    if not isinstance(new, dict):
        raise QueryError(f"Inserted value must be an OBJECT (got {type_name(new)}):\n{pretty(new)}")
    name = table.primary_key
    if name not in new:
        raise QueryError(f"Inserted object must have primary key `{name}`:\n{pretty(new)}")
    if not reql_eq(new[name], pk):
        raise QueryError(
            f"Primary key `{name}` cannot be changed (`{pretty(old)}` -> `{pretty(new)}`)."
        )


class WriteTerms:
    """INSERT, UPDATE, REPLACE and DELETE; mixed into the Evaluator."""

    def write_targets(self, value: Any) -> tuple[Table, list[Any]]:
        """The table and primary keys a write applies to."""
        if isinstance(value, SingleSel):
            return value.table, [value.pk]
        if isinstance(value, (TableRef, Selection)):
            table = value.table
            return table, [doc[table.primary_key] for doc in self.rows(value)]
        raise QueryError(f"Expected type SELECTION but found {type_name(self.as_datum(value))}.")

    def write_options(self, opts: dict, scope: dict, function_term: Any) -> dict:
        options = self.optargs({k: v for k, v in opts.items() if k != "conflict"}, scope)
        if not options.get("non_atomic") and not deterministic(function_term):
            raise QueryError(NONDETERMINISTIC_MESSAGE)
        return options  # durability is accepted and ignored

    @staticmethod
    def write_one(result: WriteResult, table: Table, pk: Any, compute: Callable) -> None:
        """Read, transform and store one document; its errors are counted, not raised."""
        old = None
        try:
            old = table.get(pk)
            new = compute(old)
            check_new_doc(table, pk, old, new)
        except QueryError as exc:
            if exc.response_type != ResponseType.RUNTIME_ERROR:
                raise
            result.error(exc.message, old)
            return
        result.apply(table, pk, old, new)

    def INSERT(self, args: list, opts: dict, scope: dict) -> Any:
        table = self.table_of(self.eval(args[0], scope))
        options = self.write_options(opts, scope, opts.get("conflict"))
        conflict = self.eval(opts["conflict"], scope) if "conflict" in opts else "error"
        if not isinstance(conflict, Func) and conflict not in ("error", "replace", "update"):
            raise QueryError(
                f"Conflict option `{conflict}` unrecognized "
                '(options are "error", "replace" and "update").'
            )
        docs = self.datum(args[1], scope)
        result = WriteResult(options.get("return_changes", False))
        for given in docs if isinstance(docs, list) else [docs]:
            doc = expect(given, "OBJECT")
            if table.primary_key not in doc:
                doc = {**doc, table.primary_key: str(uuid.uuid4())}
                result.generated_keys.append(doc[table.primary_key])
            pk = doc[table.primary_key]

            def resolve(old: Any, doc: dict = doc, pk: Any = pk) -> Any:
                if old is None or conflict == "replace":
                    return strip_literals(doc)
                if conflict == "update":
                    return merge(old, doc)
                if conflict == "error":
                    raise QueryError(
                        f"Duplicate primary key `{table.primary_key}`:\n"
                        f"{pretty(old)}\n{pretty(doc)}"
                    )
                return self.as_datum(self.call(conflict, [pk, old, doc]))

            self.write_one(result, table, pk, resolve)
        return result.to_datum()

    def UPDATE(self, args: list, opts: dict, scope: dict, replace: bool = False) -> Any:
        table, keys = self.write_targets(self.eval(args[0], scope))
        options = self.write_options(opts, scope, args[1])
        change = self.eval(args[1], scope)

        def compute(old: Any) -> Any:
            if old is None and not replace:
                return None  # update of a missing document: skipped
            value = self.as_datum(self.call(change, [old]) if isinstance(change, Func) else change)
            if replace:
                return strip_literals(value)
            if value is not None and not isinstance(value, dict):
                raise QueryError(
                    f"Inserted value must be an OBJECT (got {type_name(value)}):\n{pretty(value)}"
                )
            return old if value is None else merge(old, value)

        result = WriteResult(options.get("return_changes", False))
        for pk in keys:
            self.write_one(result, table, pk, compute)
        return result.to_datum()

    def REPLACE(self, args: list, opts: dict, scope: dict) -> Any:
        return self.UPDATE(args, opts, scope, replace=True)

    def DELETE(self, args: list, opts: dict, scope: dict) -> Any:
        table, keys = self.write_targets(self.eval(args[0], scope))
        result = WriteResult(self.optargs(opts, scope).get("return_changes", False))
        for pk in keys:
            self.write_one(result, table, pk, lambda old: None)
        return result.to_datum()
