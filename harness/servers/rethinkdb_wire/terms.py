"""The ReQL evaluator: one :class:`Evaluator` per query; method ``X`` implements term ``X``.

A term on the wire is ``[type, [args...], {optargs}]``; a JSON object is an object
literal whose values are terms; anything else is a datum.  Term methods receive the
raw argument terms, so lazy terms (BRANCH, AND, OR, DEFAULT, FUNC) evaluate only what
they need.  A term without a method is answered with a COMPILE_ERROR saying so.

Evaluation is synchronous on the server's single event-loop thread, so a whole query
(and thus every single-document read-modify-write) runs without interleaving.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from .feeds import FeedSpec
from .protocol import (
    TERM_NAMES,
    ErrorType,
    QueryError,
    ResponseType,
    TermType,
    non_existence,
    op_failed,
    unsupported,
)
from .store import Store, Table
from .values import (
    DbRef,
    Func,
    Literal,
    Selection,
    SingleSel,
    TableRef,
    Time,
    expect,
    from_wire,
    merge,
    pretty,
    reql_cmp,
    reql_eq,
    to_wire,
    truthy,
    type_name,
)
from .writes import WriteTerms

IMPLICIT = "r.row"  # scope key of the implicit variable


class Stream(list):
    """A finished sequence result (sent as SUCCESS_SEQUENCE rather than an array atom)."""


def is_sequence(value: Any) -> bool:
    return isinstance(value, (TableRef, Selection, list))


class Evaluator(WriteTerms):
    def __init__(self, store: Store, default_db: str = "test") -> None:
        self.store = store
        self.default_db = default_db
        self.now = Time.now()  # r.now() is fixed for the whole query

    # --- machinery -------------------------------------------------------------------

    def run(self, term: Any) -> Any:
        """Evaluate a START term: a FeedSpec, a Stream, or a JSON-ready datum."""
        value = self.eval(term, {})
        if isinstance(value, FeedSpec):
            return value
        if isinstance(value, (TableRef, Selection)):
            return Stream(to_wire(self.rows(value)))
        if isinstance(value, (DbRef, Func)):
            raise QueryError(
                "Query result must be of type DATUM, GROUPED_DATA, or STREAM "
                f"(got {value.reql_type})."
            )
        return to_wire(self.as_datum(value))

    def eval(self, term: Any, scope: dict) -> Any:
        if isinstance(term, list):
            if not term or not isinstance(term[0], int):
                raise QueryError("Expected a term.", response_type=ResponseType.COMPILE_ERROR)
            name = TERM_NAMES.get(term[0], str(term[0]))
            method = getattr(self, name, None) if name.isupper() else None
            if method is None:
                raise unsupported(f"Term `{name}`")
            return method(term[1] if len(term) > 1 else [], term[2] if len(term) > 2 else {}, scope)
        if isinstance(term, dict):
            return from_wire({key: self.datum(value, scope) for key, value in term.items()})
        return term

    def datum(self, term: Any, scope: dict) -> Any:
        return self.as_datum(self.eval(term, scope))

    def as_datum(self, value: Any) -> Any:
        if isinstance(value, SingleSel):
            return value.doc
        if isinstance(value, (TableRef, Selection)):
            return self.rows(value)
        if isinstance(value, (DbRef, Func, FeedSpec)):
            raise QueryError(f"Expected type DATUM but found {value.reql_type}.")
        return value

    def rows(self, value: Any) -> list:
        if isinstance(value, TableRef):
            return value.table.rows()
        if isinstance(value, Selection):
            return value.docs
        if isinstance(value, list):
            return value
        raise QueryError(f"Cannot convert {type_name(self.as_datum(value))} to SEQUENCE")

    def optargs(self, optargs: dict, scope: dict) -> dict:
        return {name: self.datum(term, scope) for name, term in optargs.items()}

    def call(self, fn: Any, args: list) -> Any:
        """Call a function value; a plain datum acts as a constant function."""
        if not isinstance(fn, Func):
            return self.as_datum(fn)
        if len(fn.params) != len(args):
            raise QueryError(
                f"Expected function with {len(args)} argument(s) but found function "
                f"with {len(fn.params)} argument(s)."
            )
        scope = {**fn.scope, **dict(zip(fn.params, args, strict=True))}
        if len(args) == 1:
            scope[IMPLICIT] = args[0]
        return self.eval(fn.body, scope)

    def db_and_rest(self, args: list, scope: dict) -> tuple[str, list]:
        """Split the ``[db?, ...]`` arguments of TABLE, TABLE_CREATE and friends."""
        if args and isinstance(args[0], list) and args[0][:1] == [TermType.DB]:
            return self.eval(args[0], scope).name, args[1:]
        return self.default_db, args

    def table_of(self, value: Any) -> Table:
        if not isinstance(value, TableRef):
            raise QueryError(f"Expected type TABLE but found {type_name(value)}.")
        return value.table

    def matcher(self, predicate: Any) -> Callable[[Any], bool]:
        if isinstance(predicate, Func):
            return lambda row: truthy(self.as_datum(self.call(predicate, [row])))
        return lambda row: reql_eq(row, predicate)

    # --- structure, variables and functions ------------------------------------------

    def MAKE_ARRAY(self, args: list, opts: dict, scope: dict) -> Any:
        return [self.datum(arg, scope) for arg in args]

    def MAKE_OBJ(self, args: list, opts: dict, scope: dict) -> Any:
        return self.optargs(opts, scope)

    def VAR(self, args: list, opts: dict, scope: dict) -> Any:
        name = self.datum(args[0], scope) if args else IMPLICIT
        if name not in scope:
            raise QueryError("Variable is not in scope.", response_type=ResponseType.COMPILE_ERROR)
        return scope[name]

    IMPLICIT_VAR = VAR

    def FUNC(self, args: list, opts: dict, scope: dict) -> Any:
        return Func(self.datum(args[0], scope), args[1], scope)

    def FUNCALL(self, args: list, opts: dict, scope: dict) -> Any:
        fn = self.eval(args[0], scope)
        return self.call(fn, [self.datum(arg, scope) for arg in args[1:]])

    # --- control flow and errors -----------------------------------------------------

    def BRANCH(self, args: list, opts: dict, scope: dict) -> Any:
        if len(args) < 3 or len(args) % 2 == 0:
            raise QueryError("Cannot call `branch` term with an even number of arguments.")
        for i in range(0, len(args) - 1, 2):
            if truthy(self.datum(args[i], scope)):
                return self.eval(args[i + 1], scope)
        return self.eval(args[-1], scope)

    def AND(self, args: list, opts: dict, scope: dict, stop_when: bool = False) -> Any:
        value: Any = not stop_when
        for arg in args:
            value = self.datum(arg, scope)
            if truthy(value) == stop_when:
                return value
        return value

    def OR(self, args: list, opts: dict, scope: dict) -> Any:
        return self.AND(args, opts, scope, stop_when=True)

    def NOT(self, args: list, opts: dict, scope: dict) -> Any:
        return not truthy(self.datum(args[0], scope))

    def ERROR(self, args: list, opts: dict, scope: dict) -> Any:
        if not args:
            raise QueryError("Empty ERROR term outside a default block.")
        raise QueryError(expect(self.datum(args[0], scope), "STRING"), ErrorType.USER)

    def DEFAULT(self, args: list, opts: dict, scope: dict) -> Any:
        """Value of args[0] unless it is null or raised a non-existence error."""
        error = None
        try:
            value = self.datum(args[0], scope)
            if value is not None:
                return value
        except QueryError as exc:
            if exc.error_type != ErrorType.NON_EXISTENCE:
                raise
            error = exc.message
        fallback = self.eval(args[1], scope)
        return (
            self.call(fallback, [error]) if isinstance(fallback, Func) else self.as_datum(fallback)
        )

    # --- comparison and arithmetic ---------------------------------------------------

    def compare(self, args: list, scope: dict, test: Callable[[int], bool]) -> bool:
        values = [self.datum(arg, scope) for arg in args]
        return all(test(reql_cmp(a, b)) for a, b in itertools.pairwise(values))

    def EQ(self, args: list, opts: dict, scope: dict) -> Any:
        return self.compare(args, scope, lambda c: c == 0)

    def NE(self, args: list, opts: dict, scope: dict) -> Any:
        return self.compare(args, scope, lambda c: c != 0)

    def LT(self, args: list, opts: dict, scope: dict) -> Any:
        return self.compare(args, scope, lambda c: c < 0)

    def LE(self, args: list, opts: dict, scope: dict) -> Any:
        return self.compare(args, scope, lambda c: c <= 0)

    def GT(self, args: list, opts: dict, scope: dict) -> Any:
        return self.compare(args, scope, lambda c: c > 0)

    def GE(self, args: list, opts: dict, scope: dict) -> Any:
        return self.compare(args, scope, lambda c: c >= 0)

    def ADD(self, args: list, opts: dict, scope: dict) -> Any:
        first, *rest = [self.datum(arg, scope) for arg in args]
        if isinstance(first, str):
            return first + "".join(expect(v, "STRING") for v in rest)
        if isinstance(first, list):
            return first + [x for v in rest for x in expect(v, "ARRAY")]
        if isinstance(first, Time):
            return Time(first.epoch + sum(expect(v, "NUMBER") for v in rest), first.tz)
        return expect(first, "NUMBER") + sum(expect(v, "NUMBER") for v in rest)

    def SUB(self, args: list, opts: dict, scope: dict) -> Any:
        first, *rest = [self.datum(arg, scope) for arg in args]
        if isinstance(first, Time):
            if len(rest) == 1 and isinstance(rest[0], Time):
                return round(first.epoch - rest[0].epoch, 3)
            return Time(first.epoch - sum(expect(v, "NUMBER") for v in rest), first.tz)
        return expect(first, "NUMBER") - sum(expect(v, "NUMBER") for v in rest)

    def MUL(self, args: list, opts: dict, scope: dict) -> Any:
        first, *rest = [self.datum(arg, scope) for arg in args]
        if isinstance(first, list):
            return first * int(expect(rest[0], "NUMBER"))
        product = expect(first, "NUMBER")
        for value in rest:
            product *= expect(value, "NUMBER")
        return product

    def DIV(self, args: list, opts: dict, scope: dict) -> Any:
        first, *rest = [expect(self.datum(arg, scope), "NUMBER") for arg in args]
        for value in rest:
            if value == 0:
                raise QueryError("Cannot divide by zero.")
            first /= value
        return first

    def FLOOR(self, args: list, opts: dict, scope: dict) -> Any:
        return math.floor(expect(self.datum(args[0], scope), "NUMBER"))

    def CEIL(self, args: list, opts: dict, scope: dict) -> Any:
        return math.ceil(expect(self.datum(args[0], scope), "NUMBER"))

    def ROUND(self, args: list, opts: dict, scope: dict) -> Any:
        # RethinkDB rounds halves away from zero (Python's round() rounds them to even).
        value = expect(self.datum(args[0], scope), "NUMBER")
        return math.copysign(math.floor(abs(value) + 0.5), value)

    # --- objects and sequences -------------------------------------------------------

    def GET_FIELD(self, args: list, opts: dict, scope: dict, name: str = "get_field") -> Any:
        target, key = self.eval(args[0], scope), self.datum(args[1], scope)
        if is_sequence(target):
            rows = self.rows(target)
            if isinstance(key, int) and not isinstance(key, bool):  # r.expr([..])[i]
                if not -len(rows) <= key < len(rows):
                    raise non_existence(f"Index out of bounds: {key}")
                return rows[key]
            return [row[key] for row in rows if isinstance(row, dict) and key in row]
        target = self.as_datum(target)
        if isinstance(target, dict):
            if expect(key, "STRING") not in target:
                raise non_existence(f"No attribute `{key}` in object:\n{pretty(target)}")
            return target[key]
        message = f"Cannot perform {name} on a non-object non-sequence `{pretty(target)}`."
        raise non_existence(message) if target is None else QueryError(message)

    def BRACKET(self, args: list, opts: dict, scope: dict) -> Any:
        return self.GET_FIELD(args, opts, scope, name="bracket")

    def HAS_FIELDS(self, args: list, opts: dict, scope: dict) -> Any:
        target = self.eval(args[0], scope)
        fields = [self.datum(arg, scope) for arg in args[1:]]
        if not all(isinstance(field, str) for field in fields):
            raise unsupported("has_fields() with nested field selectors")

        def has(doc: Any) -> bool:
            return isinstance(doc, dict) and all(doc.get(f) is not None for f in fields)

        if is_sequence(target):
            kept = [row for row in self.rows(target) if has(row)]
            return kept if isinstance(target, list) else Selection(target.table, kept)
        value = self.as_datum(target)
        if not isinstance(value, dict):
            raise QueryError(
                f"Cannot perform has_fields on a non-object non-sequence `{pretty(value)}`."
            )
        return has(value)

    def MERGE(self, args: list, opts: dict, scope: dict) -> Any:
        target = self.eval(args[0], scope)
        patches = [self.eval(arg, scope) for arg in args[1:]]

        def merge_one(doc: Any) -> Any:
            out = expect(doc, "OBJECT")
            for patch in patches:
                value = self.as_datum(self.call(patch, [out])) if isinstance(patch, Func) else patch
                out = merge(out, value if isinstance(value, Literal) else expect(value, "OBJECT"))
            return out

        if is_sequence(target):
            return [merge_one(row) for row in self.rows(target)]
        return merge_one(self.as_datum(target))

    def LITERAL(self, args: list, opts: dict, scope: dict) -> Any:
        return Literal(self.datum(args[0], scope)) if args else Literal(remove=True)

    def KEYS(self, args: list, opts: dict, scope: dict) -> Any:
        return sorted(expect(self.datum(args[0], scope), "OBJECT"))

    def COUNT(self, args: list, opts: dict, scope: dict) -> Any:
        rows = self.rows(self.eval(args[0], scope))
        if len(args) == 1:
            return len(rows)
        matches = self.matcher(self.eval(args[1], scope))
        return sum(1 for row in rows if matches(row))

    def CONTAINS(self, args: list, opts: dict, scope: dict) -> Any:
        rows = self.rows(self.eval(args[0], scope))
        wanted = [self.matcher(self.eval(arg, scope)) for arg in args[1:]]
        return all(any(matches(row) for row in rows) for matches in wanted)

    def TYPE_OF(self, args: list, opts: dict, scope: dict) -> Any:
        return type_name(self.eval(args[0], scope))

    def COERCE_TO(self, args: list, opts: dict, scope: dict) -> Any:
        value = self.eval(args[0], scope)
        target = expect(self.datum(args[1], scope), "STRING").upper()
        if target == "ARRAY" and is_sequence(value):
            return list(self.rows(value))
        value = self.as_datum(value)
        current = type_name(value)
        if target == current:
            return value
        if target == "BOOL":
            return truthy(value)
        if target == "STRING" and current == "NUMBER":
            return str(int(value)) if float(value).is_integer() else repr(float(value))
        if target == "NUMBER" and current == "STRING":
            try:
                return float(value)
            except ValueError:
                raise QueryError(f"Could not coerce `{value}` to NUMBER.") from None
        if target == "ARRAY" and current == "OBJECT":
            return [[k, v] for k, v in value.items()]
        if target == "OBJECT" and current == "ARRAY":
            return {expect(pair[0], "STRING"): pair[1] for pair in value}
        raise QueryError(f"Cannot coerce {current} to {target}.")

    # --- time ------------------------------------------------------------------------

    def NOW(self, args: list, opts: dict, scope: dict) -> Any:
        return self.now

    def TO_EPOCH_TIME(self, args: list, opts: dict, scope: dict) -> Any:
        return expect(self.datum(args[0], scope), "PTYPE<TIME>").epoch

    def EPOCH_TIME(self, args: list, opts: dict, scope: dict) -> Any:
        return Time(round(expect(self.datum(args[0], scope), "NUMBER"), 3))

    def ISO8601(self, args: list, opts: dict, scope: dict) -> Any:  # Python datetimes
        return Time.from_iso8601(expect(self.datum(args[0], scope), "STRING"))

    # --- databases, tables and reads -------------------------------------------------

    def DB(self, args: list, opts: dict, scope: dict) -> Any:
        return DbRef(expect(self.datum(args[0], scope), "STRING"))

    def TABLE(self, args: list, opts: dict, scope: dict) -> Any:  # read_mode is ignored
        db, rest = self.db_and_rest(args, scope)
        return TableRef(self.store.table(db, expect(self.datum(rest[0], scope), "STRING")))

    def GET(self, args: list, opts: dict, scope: dict) -> Any:
        return SingleSel(self.table_of(self.eval(args[0], scope)), self.datum(args[1], scope))

    def GET_ALL(self, args: list, opts: dict, scope: dict) -> Any:
        table = self.table_of(self.eval(args[0], scope))
        index = self.optargs(opts, scope).get("index", table.primary_key)
        if index != table.primary_key:
            raise op_failed(f"Index `{index}` was not found on table `{table.full_name}`.")
        docs = [table.get(self.datum(arg, scope)) for arg in args[1:]]
        return Selection(table, [doc for doc in docs if doc is not None])

    def FILTER(self, args: list, opts: dict, scope: dict) -> Any:
        source, predicate = self.eval(args[0], scope), self.eval(args[1], scope)

        def keep(row: Any) -> bool:
            try:
                if isinstance(predicate, dict):
                    return isinstance(row, dict) and all(
                        key in row and reql_eq(row[key], value) for key, value in predicate.items()
                    )
                return truthy(self.as_datum(self.call(predicate, [row])))
            except QueryError as exc:  # a missing field counts as `default` (false)
                if exc.error_type != ErrorType.NON_EXISTENCE:
                    raise
                return "default" in opts and truthy(self.datum(opts["default"], scope))

        kept = [row for row in self.rows(source) if keep(row)]
        return kept if isinstance(source, list) else Selection(source.table, kept)

    def LIMIT(self, args: list, opts: dict, scope: dict) -> Any:
        """The first n of a sequence; of a table or selection, still a selection (a write
        target, as in ``filter(...).limit(n).delete()``)."""
        source, count = self.eval(args[0], scope), self.datum(args[1], scope)
        expect(count, "NUMBER")
        if count != int(count):
            raise QueryError(f"Number not an integer: {count}")
        if count < 0:
            raise QueryError("LIMIT takes a non-negative argument.")
        kept = self.rows(source)[: int(count)]
        return kept if isinstance(source, list) else Selection(source.table, kept)

    # --- administration --------------------------------------------------------------

    def DB_CREATE(self, args: list, opts: dict, scope: dict) -> Any:
        return self.store.db_create(self.datum(args[0], scope))

    def DB_DROP(self, args: list, opts: dict, scope: dict) -> Any:
        return self.store.db_drop(expect(self.datum(args[0], scope), "STRING"))

    def DB_LIST(self, args: list, opts: dict, scope: dict) -> Any:
        return sorted(self.store.dbs)

    def TABLE_CREATE(self, args: list, opts: dict, scope: dict) -> Any:
        db, rest = self.db_and_rest(args, scope)
        primary_key = expect(self.optargs(opts, scope).get("primary_key", "id"), "STRING")
        return self.store.table_create(db, self.datum(rest[0], scope), primary_key)

    def TABLE_DROP(self, args: list, opts: dict, scope: dict) -> Any:
        db, rest = self.db_and_rest(args, scope)
        return self.store.table_drop(db, expect(self.datum(rest[0], scope), "STRING"))

    def TABLE_LIST(self, args: list, opts: dict, scope: dict) -> Any:
        return sorted(self.store.db(self.db_and_rest(args, scope)[0]))

    def WAIT(self, args: list, opts: dict, scope: dict) -> Any:  # everything is always ready
        target = self.eval(args[0], scope)
        if isinstance(target, DbRef):
            return {"ready": len(self.store.db(target.name))}
        self.table_of(target)
        return {"ready": 1}

    # --- changefeeds -----------------------------------------------------------------

    def CHANGES(self, args: list, opts: dict, scope: dict) -> Any:
        source = self.eval(args[0], scope)
        options = self.optargs(opts, scope)  # squash is accepted and behaves as squash=False
        if isinstance(source, SingleSel):
            return FeedSpec(source.table, source.pk, options)
        if isinstance(source, TableRef):
            return FeedSpec(source.table, None, options)
        raise unsupported("changes() on anything but a table or table.get(key)")
