"""The SQL of the PostgreSQL backend: each primitive is one statement, built once per table.

Every write is a ``WITH`` query that, in one statement and so in one transaction:

1. ``clock``: reads the server's clock (``clock_timestamp()``, whole milliseconds) and the
   server's *history marker* - ``system_identifier`` of the cluster and the start time of the
   running postmaster. A restart (after a crash, from a base backup, a PITR) or a promoted
   standby has another one, so a record stamped with an earlier marker is *suspect*
   (``Observation.suspect``), as Redis' ``run_id/master_replid`` is.
2. ``cur``: locks the election's row ``FOR UPDATE``; under READ COMMITTED a row that a
   concurrent write is changing is waited for and re-read at its newest version, so the
   compare below always sees the latest committed record.
3. ``seen``: decides what that row is: missing, ours (``valid``) or foreign, its version as
   the engine counts it (0 missing, -1 foreign) and whether it is suspect.
4. ``new`` keeps it only if the compare of :mod:`~celery_leaderfeed.backends.transitions`
   holds; ``upd`` (or, for a claim over a missing row, ``ins ... ON CONFLICT DO NOTHING``)
   writes it, and ``sent`` calls ``pg_notify`` with the written record: the notification is
   delivered at commit, so never for a write that did not commit and always for one that did.

The reply row carries what was found (``seen``) and what was written (``written``), so a
refused write reports the record that refused it.

Once-only marks are rows of ``<table>_marks`` keyed by ``(name, key)``, with an expiry from the
server's clock. :attr:`Statements.mark_once` is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE
expired``: it inserts a new mark, replaces an expired one, or leaves a held one alone; an index
on ``expires_at`` serves the bounded sweep of expired rows (:attr:`Statements.sweep_marks`).
"""

# The statements are assembled from this module's constants only; names come in through
# psycopg.sql.Identifier and values as query parameters, so S608 has nothing to find here.
# ruff: noqa: S608

from __future__ import annotations

from psycopg import sql

from ..transitions import CLOCK_LAG_MS

__all__ = ["MARK_COLUMNS", "RECORD_COLUMNS", "SCHEDULE_COLUMNS", "Statements"]

#: The record table's columns, as created (and as checked on a table that already exists).
RECORD_COLUMNS = (
    "name", "format", "holder", "token", "term", "version", "nominee", "renewed_at", "history",
)  # fmt: skip
#: The schedule table's columns.
SCHEDULE_COLUMNS = ("name", "entry", "state")
#: The marks table's columns.
MARK_COLUMNS = ("name", "key", "value", "expires_at")

_FORMAT = "leaderfeed/1"

# The server's clock in ms and its history marker (see the module docstring).
_CLOCK = """
clock AS (
  SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms,
         (SELECT system_identifier::text FROM pg_control_system()) || '/'
           || to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC',
                      'YYYYMMDD"T"HH24MISS.US') AS here
)"""

# What the row is, as the engine counts it (celery_leaderfeed.record.decode_record's rules).
_SEEN = f"""
seen AS (
  SELECT c.name IS NOT NULL AS present,
         coalesce(c.format = '{_FORMAT}' AND c.term >= 1 AND c.version >= 1
                  AND (c.holder IS NULL) = (c.token IS NULL), false) AS valid,
         c.holder, c.token, c.term, c.version, c.nominee, c.renewed_at, c.history,
         k.ms, k.here
  FROM clock k LEFT JOIN cur c ON true
),
judged AS (
  SELECT s.*,
         CASE WHEN NOT s.present THEN 0 WHEN s.valid THEN s.version ELSE -1 END AS seen_version,
         s.valid AND s.history IS DISTINCT FROM s.here AS suspect
  FROM seen s
)"""

# Columns of the reply: found, then written (NULLs when nothing was written).
_REPLY = """
SELECT j.present, j.valid, j.suspect, j.holder, j.token, j.term, j.version, j.nominee,
       j.renewed_at, j.ms, w.name IS NOT NULL, w.holder, w.token, w.term, w.version, w.nominee,
       w.renewed_at, (SELECT count(*) FROM sent)
FROM judged j LEFT JOIN written w ON true"""

_PAYLOAD = f"""json_build_object(
  'format', '{_FORMAT}', 'holder', w.holder, 'token', w.token, 'term', w.term,
  'version', w.version, 'nominee', w.nominee, 'renewed_at', w.renewed_at)::text"""

# Holds for a record that term/token hold (transitions._holds), as columns of ``judged``.
_HOLDS = "n.valid AND NOT n.suspect AND n.term = %(term)s AND n.token = %(token)s"

# claim (transitions.claimed): over a missing, foreign or suspect record term and version start
# at the clock in ms; over a trusted one they rise by one but never fall LAG below the clock.
_CLAIM_TERM = (
    "CASE WHEN n.valid THEN greatest(n.term + 1, n.ms - CASE WHEN n.suspect THEN 0 ELSE LAG END,"
    " %(min_term)s) ELSE greatest(n.ms, %(min_term)s) END"
).replace("LAG", str(CLOCK_LAG_MS))
_CLAIM_VERSION = _CLAIM_TERM.replace("n.term", "n.version").replace("min_term", "min_version")


class Statements:
    """Every statement of one record table and its schedule table."""

    def __init__(self, schema: str, table: str) -> None:
        self.schema = sql.Identifier(schema)
        self.records = sql.Identifier(schema, table)
        self.schedule = sql.Identifier(schema, f"{table}_schedule")
        self.records_name = f"{schema}.{table}"
        self.schedule_name = f"{schema}.{table}_schedule"
        self.marks = sql.Identifier(schema, f"{table}_marks")
        self.marks_name = f"{schema}.{table}_marks"

        self.create_schema = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self.schema)
        self.create_records = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, format text, holder text, "
            "token text, term bigint, version bigint, nominee text, "
            "renewed_at double precision, history text)"
        ).format(self.records)
        self.create_schedule = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (name text NOT NULL, entry text NOT NULL, "
            "state text NOT NULL, PRIMARY KEY (name, entry))"
        ).format(self.schedule)
        self.check_records = self._probe(self.records, RECORD_COLUMNS)
        self.check_schedule = self._probe(self.schedule, SCHEDULE_COLUMNS)
        self.create_marks = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (name text NOT NULL, key text NOT NULL, "
            "value text NOT NULL, expires_at timestamptz NOT NULL, PRIMARY KEY (name, key))"
        ).format(self.marks)
        # Made with its table (under the creation lock), so it needs no name of our own.
        self.index_marks = sql.SQL("CREATE INDEX ON {} (expires_at)").format(self.marks)
        self.check_marks = self._probe(self.marks, MARK_COLUMNS)
        self.mark_once, self.held_mark, self.sweep_marks = self._marks()

        self.read = self._query(lock=False)
        self.claim = self._write(
            "n.seen_version = %(expected)s",
            "holder = %(holder)s, token = %(token)s, term = NEW_TERM, version = NEW_VERSION, "
            "nominee = NULL",
            insert=True,
        )
        self.renew = self._write(
            _HOLDS,
            "version = n.version + 1, "
            "nominee = CASE WHEN n.nominee = n.holder THEN NULL ELSE n.nominee END",
        )
        self.resign = self._write(
            _HOLDS,
            "holder = NULL, token = NULL, nominee = %(nominee)s, version = n.version + 1",
        )
        self.nominate = self._write(
            "n.valid AND NOT n.suspect AND n.version = %(expected)s",
            "nominee = %(nominee)s, version = n.version + 1",
        )
        self.read_entries = sql.SQL("SELECT entry, state FROM {} WHERE name = %(name)s").format(
            self.schedule
        )
        self.write_entry = self._write_entry()

    @staticmethod
    def _probe(table: sql.Identifier, columns: tuple[str, ...]) -> sql.Composed:
        return sql.SQL("SELECT {} FROM {} WHERE false").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), table
        )

    def _query(self, *, lock: bool, body: str = "", changes: str = "") -> sql.Composed:
        cur = "SELECT * FROM {records} WHERE name = %(name)s" + (" FOR UPDATE" if lock else "")
        written = (
            changes
            or "written AS (SELECT NULL::text AS name, NULL::text AS holder, NULL::text AS token,"
            " NULL::bigint AS term, NULL::bigint AS version, NULL::text AS nominee,"
            " NULL::double precision AS renewed_at WHERE false),\n"
            "sent AS (SELECT 1 WHERE false)"
        )
        text = f"WITH {_CLOCK},\ncur AS ({cur}),{_SEEN},\n{body}{written}\n{_REPLY}"
        return sql.SQL(text).format(records=self.records)

    def _write(self, compare: str, assignments: str, *, insert: bool = False) -> sql.Composed:
        """A compare-and-set: ``compare`` on ``judged`` (as ``n``), ``assignments`` for the
        row (``renewed_at`` and ``history`` are always written)."""
        assignments = (
            assignments.replace("NEW_TERM", _CLAIM_TERM).replace("NEW_VERSION", _CLAIM_VERSION)
            + ", format = '"
            + _FORMAT
            + "', renewed_at = n.ms / 1000.0, history = n.here"
        )
        returning = (
            "RETURNING r.name, r.holder, r.token, r.term, r.version, r.nominee, r.renewed_at"
        )
        body = f"new AS (SELECT * FROM judged n WHERE {compare}),\n"
        body += (
            f"upd AS (UPDATE {{records}} r SET {assignments} FROM new n "
            f"WHERE r.name = %(name)s AND n.present {returning}),\n"
        )
        if insert:
            # A claim over a missing row inserts it; a racing claimer's row wins the conflict
            # and this one writes nothing (it then reads what won).
            body += (
                "ins AS (INSERT INTO {records} AS r (name, format, holder, token, term, version, "
                f"nominee, renewed_at, history) SELECT %(name)s, '{_FORMAT}', %(holder)s, "
                f"%(token)s, {_CLAIM_TERM}, {_CLAIM_VERSION}, NULL, n.ms / 1000.0, n.here "
                f"FROM new n WHERE NOT n.present ON CONFLICT (name) DO NOTHING {returning}),\n"
            )
            written = "written AS (SELECT * FROM upd UNION ALL SELECT * FROM ins),\n"
        else:
            written = "written AS (SELECT * FROM upd),\n"
        changes = written + f"sent AS (SELECT pg_notify(%(channel)s, {_PAYLOAD}) FROM written w)"
        return self._query(lock=True, body=body, changes=changes)

    def _marks(self) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
        # The reply: whether this statement wrote the mark, and the value held - NULL when the
        # statement's snapshot does not show the mark that refused it (one committed after the
        # snapshot was taken, which ON CONFLICT still waits for and sees): then ``held_mark``
        # reads it in a new snapshot.
        mark_once = """WITH ins AS (
  INSERT INTO {marks} AS m (name, key, value, expires_at)
  VALUES (%(name)s, %(key)s, %(value)s,
          clock_timestamp() + %(ttl)s::double precision * interval '1 second')
  ON CONFLICT (name, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at
  WHERE m.expires_at <= clock_timestamp()
  RETURNING 1
)
SELECT (SELECT count(*) FROM ins),
       (SELECT value FROM {marks}
        WHERE name = %(name)s AND key = %(key)s AND expires_at > clock_timestamp())"""
        held_mark = """SELECT value FROM {marks}
WHERE name = %(name)s AND key = %(key)s AND expires_at > clock_timestamp()"""
        # Any election's expired marks, at most %(limit)s, skipping rows a mark is replacing.
        sweep = """DELETE FROM {marks} WHERE (name, key) IN (
  SELECT name, key FROM {marks} WHERE expires_at <= clock_timestamp()
  LIMIT %(limit)s FOR UPDATE SKIP LOCKED
)"""
        return (
            sql.SQL(mark_once).format(marks=self.marks),
            sql.SQL(held_mark).format(marks=self.marks),
            sql.SQL(sweep).format(marks=self.marks),
        )

    def _write_entry(self) -> sql.Composed:
        # The record row is locked FOR SHARE: a claim replacing the term waits for this write
        # to commit, and this write, if the claim came first, re-reads the row at its newest
        # version (READ COMMITTED re-checks the WHERE) and finds the term gone. A subquery
        # would read the row from the statement's snapshot and could miss that claim.
        text = f"""WITH {_CLOCK},
holder AS (
  SELECT 1 FROM {{records}} r, clock k
  WHERE r.name = %(name)s AND r.format = '{_FORMAT}' AND r.term = %(term)s
    AND r.token = %(token)s AND r.history = k.here
  FOR SHARE OF r
),
upd AS (
  UPDATE {{schedule}} e SET state = %(new)s FROM holder
  WHERE e.name = %(name)s AND e.entry = %(entry)s AND %(has_expected)s
    AND e.state = %(expected)s
  RETURNING 1
),
ins AS (
  INSERT INTO {{schedule}} (name, entry, state) SELECT %(name)s, %(entry)s, %(new)s FROM holder
  WHERE NOT %(has_expected)s ON CONFLICT (name, entry) DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM upd) + (SELECT count(*) FROM ins)"""
        return sql.SQL(text).format(records=self.records, schedule=self.schedule)
