"""The ETL's working DuckDB database: where source rows land and merge.

Tables carry no PRIMARY KEY constraint: building and maintaining the ART
index costs about a third of a full load and is copied into every snapshot,
while the merge below only needs hash joins on the key columns, whose cost
is dominated by the delta (see docs/architecture.md, ETL section).

All writes to the working tables go through this class: it keeps their row
counts (a `count(*)` after deletes scans the table).

Lake mode (`track_changes`): every write also records, in the same
transaction, which keys it changed (`__lake."<table>"`) or that the table
must be sent whole (`__lake.__full`: a table new to the lake or reshaped),
so the lake publisher sends only those rows; a reload of a table the lake
holds in the same shape records the keys whose rows it changed. The records
are cleared once the lake commit and the manifest are out, so a crash in
between re-sends them (the lake applies them idempotently).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from analytics_shared.logging_config import get_logger
from analytics_shared.snapshot_file import quote_ident

__all__ = ["MergeResult", "Warehouse"]

log = get_logger(__name__)

Columns = Sequence[tuple[str, str | None]]

# Lake mode's record of what changed since the last lake commit.
CHANGES = "__lake"
FULL = f"{CHANGES}.__full"

# Delta rows replacing (or soft-deleting) a row the table holds.
_WRITTEN = "__delta WHERE __write AND __found"


def _select(columns: Columns, source: str = "__incoming") -> str:
    cols = ", ".join(
        f"CAST({quote_ident(n)} AS {t}) AS {quote_ident(n)}" if t else quote_ident(n)
        for n, t in columns
    )
    return f"SELECT {cols} FROM {source}"


def _join(pk: Sequence[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{quote_ident(c)} = {right}.{quote_ident(c)}" for c in pk)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _differs(left: str, right: str) -> str:
    """True when two tables of the same columns hold different rows (as multisets)."""
    return (
        "SELECT EXISTS (SELECT 1 FROM ("
        f"(SELECT * FROM {left} EXCEPT ALL SELECT * FROM {right})"
        f" UNION ALL (SELECT * FROM {right} EXCEPT ALL SELECT * FROM {left})"
        "))"
    )


def _gone(soft_delete: str, columns: Columns, alias: str) -> str:
    """True for a soft-deleted row: a set boolean flag, or any value in another type."""
    sd = f"{alias}.{quote_ident(soft_delete)}"
    if dict(columns).get(soft_delete) == "BOOLEAN":
        return f"coalesce(CAST({sd} AS BOOLEAN), FALSE)"
    return f"{sd} IS NOT NULL"


@dataclass(frozen=True)
class MergeResult:
    read: int  # rows in the delta (after collapsing duplicate keys)
    upserted: int  # rows inserted or changed
    deleted: int  # rows removed because their soft-delete column is set

    @property
    def changed(self) -> int:
        return self.upserted + self.deleted


class Warehouse:
    def __init__(
        self,
        path: Path,
        config: Mapping[str, str | int] | None = None,
        *,
        track_changes: bool = False,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # DuckDB settings for every connection (memory_limit, threads, temp_directory).
        self.config: dict[str, str | bool | int | float | list[str]] = dict(config or {})
        self.con = duckdb.connect(str(self.path), config=self.config)
        self.track_changes = track_changes
        self.con.execute(
            f"CREATE SCHEMA IF NOT EXISTS {CHANGES}"
            if track_changes
            else f"DROP SCHEMA IF EXISTS {CHANGES} CASCADE"
        ).fetchall()
        if track_changes:
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {FULL} (table_name VARCHAR PRIMARY KEY)"
            ).fetchall()
        # Where a crash between merging and publishing is remembered.
        self.unpublished_marker = self.path.with_name(self.path.name + ".unpublished")
        self._rows: dict[str, int] = {}  # row counts known from the last write
        self._type_names: dict[str, str] = {}

    def close(self) -> None:
        self.con.close()

    def ensure_usable(self) -> None:
        """Reopen the file if DuckDB invalidated the connection.

        After a fatal error (a checkpoint that found the disk full, say) DuckDB
        refuses every statement until the database is opened again; opening
        replays the WAL, so committed merges are kept. Called before each cycle,
        so a long-running worker heals once the cause is gone."""
        try:
            self.con.execute("SELECT 1").fetchall()
        except duckdb.FatalException as exc:
            log.warning("warehouse_reopening", error=str(exc).splitlines()[0])
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            self._rows.clear()
            self.con = duckdb.connect(str(self.path), config=self.config)

    # -- inspection ---------------------------------------------------------

    def has_table(self, table: str) -> bool:
        return bool(self.columns(table))

    def row_count(self, table: str) -> int:
        if table not in self._rows:
            rows = self.con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchall()
            self._rows[table] = int(rows[0][0])
        return self._rows[table]

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, type) of the working table's columns in order; [] when it does not exist."""
        rows = self.con.execute(
            # duckdb_columns() directly: half the cost of information_schema.
            "SELECT column_name, data_type FROM duckdb_columns()"
            " WHERE database_name = current_database() AND schema_name = 'main'"
            " AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
        return [(str(n), str(t)) for n, t in rows]

    def canonical_type(self, type_name: str) -> str:
        """DuckDB's own spelling of a type name (REAL is FLOAT), so types compare."""
        if type_name not in self._type_names:
            rows = self.con.execute(f"SELECT typeof(CAST(NULL AS {type_name}))").fetchall()
            self._type_names[type_name] = str(rows[0][0])
        return self._type_names[type_name]

    def max_value(self, table: str, column: str) -> str | None:
        row = self.con.execute(
            f"SELECT max({quote_ident(column)})::VARCHAR FROM {quote_ident(table)}"
        ).fetchall()
        return None if not row or row[0][0] is None else str(row[0][0])

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT").fetchall()

    # -- loading ----------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, batches: pa.RecordBatchReader) -> Iterator[None]:
        """One transaction with `batches` visible as __incoming."""
        self.con.register("__incoming", batches)
        try:
            self.con.execute("BEGIN").fetchall()
            yield
            self.con.execute("COMMIT").fetchall()
        except BaseException:
            # A failed COMMIT (e.g. no space left for the WAL) has already ended
            # the transaction: keep its error, not ROLLBACK's "no transaction".
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK").fetchall()
            raise
        finally:
            self.con.unregister("__incoming")

    def _value(self, sql: str) -> object:
        """The first column of the statement's first row (a count, for DML)."""
        rows = self.con.execute(sql).fetchall()
        return rows[0][0] if rows and rows[0] else None

    def _run(self, batches: pa.RecordBatchReader, statements: Sequence[str]) -> list[object]:
        """Run statements in one transaction with `batches` visible as __incoming."""
        with self._transaction(batches):
            return [self._value(sql) for sql in statements]

    def replace_table(
        self,
        table: str,
        batches: pa.RecordBatchReader,
        columns: Columns,
        *,
        detect_changes: bool = False,
        soft_delete: str | None = None,
        primary_key: Sequence[str] | None = None,
    ) -> tuple[int, bool]:
        """Load a whole table from a batch stream and swap it in atomically.

        `columns` gives each column's DuckDB type (None: keep the Arrow type).
        Returns (rows, changed); `changed` compares with the old contents
        only when asked (it costs a pass over both copies), or when lake mode
        compares anyway:

        Lake mode: a reload of a table the lake already holds in the same shape
        (same columns and types, a primary key, not already to be sent whole)
        records the keys whose rows differ from the old contents, so the lake
        gets a delta; anything else (a new or reshaped table) is sent whole.
        A restart after a kill reloads a table whose watermark was never
        recorded; this is what keeps that reload from rewriting the lake.
        """
        staging, target = quote_ident(f"__load_{table}"), quote_ident(table)
        held = self.columns(table)
        same_names = bool(held) and [n for n, _ in held] == [n for n, _ in columns]
        by_key = (
            self.track_changes
            and bool(primary_key)
            and same_names
            and not self._pending_whole(table)
        )
        self._rows.pop(table, None)
        # The stream comes from one extractor thread, and one DuckDB thread
        # keeps up with it; a second only competes with the extractor and the
        # source for cores (measured: less CPU, ~5% faster on 2 cores).
        threads = self.con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        self.con.execute("SET threads = 1").fetchall()
        try:
            with self._transaction(batches):
                self._value(f"DROP TABLE IF EXISTS {staging}")
                created = self._value(
                    f"CREATE TABLE {staging} AS {_select(columns)}"
                    + (
                        f" WHERE NOT ({_gone(soft_delete, columns, '__incoming')})"
                        if soft_delete
                        else ""
                    )
                )
                rows = int(created or 0)  # type: ignore[call-overload]  # CTAS: its row count
                if by_key and self.columns(f"__load_{table}") == held:
                    assert primary_key is not None
                    changed = self._record_reload(table, primary_key, staging, target)
                else:
                    changed = True
                    if detect_changes and same_names:
                        changed = bool(self._value(_differs(staging, target)))
                    if self.track_changes:
                        self._value(f"DROP TABLE IF EXISTS {self._changes(table)}")
                        self._value(f"INSERT OR IGNORE INTO {FULL} VALUES ({_literal(table)})")
                self._value(f"DROP TABLE IF EXISTS {target}")
                self._value(f"ALTER TABLE {staging} RENAME TO {target}")
        finally:
            self.con.execute(f"SET threads = {int(threads)}").fetchall()
        self._rows[table] = rows
        return rows, changed

    def _record_reload(
        self, table: str, primary_key: Sequence[str], staging: str, target: str
    ) -> bool:
        """Record the keys whose rows a reload added, changed or removed; True
        when there are any. One hash join on the key (a tenth of the time of
        EXCEPT ALL both ways over whole rows: 0.8 s against 7 s for 2M rows)."""
        differs = " OR ".join(
            f"n.{quote_ident(c)} IS DISTINCT FROM o.{quote_ident(c)}"
            for c, _ in self.columns(table)
        )
        keys = (
            "SELECT "
            + ", ".join(f"coalesce(n.{quote_ident(c)}, o.{quote_ident(c)})" for c in primary_key)
            + f" FROM (SELECT TRUE AS __new, * FROM {staging}) n"
            f" FULL JOIN (SELECT TRUE AS __old, * FROM {target}) o"
            f" ON {_join(primary_key, 'n', 'o')}"
            f" WHERE n.__new IS NULL OR o.__old IS NULL OR {differs}"
        )
        results = [self._value(sql) for sql in self._record(table, primary_key, keys)]
        return bool(results[-1])

    def merge(
        self,
        table: str,
        batches: pa.RecordBatchReader,
        columns: Columns,
        *,
        primary_key: Sequence[str],
        cursor: str | None,
        soft_delete: str | None = None,
    ) -> MergeResult:
        """Upsert a delta by primary key, in one transaction.

        Duplicate keys inside the delta collapse to the latest cursor value;
        rows identical to what the table holds are not rewritten (re-reads of
        the lookback window are free and do not count as changes); rows whose
        soft-delete column is set are removed.

        One statement collapses the delta and joins it with the table (one
        scan of the table), marking each delta row new, changed, unchanged or
        soft-deleted together with the rowid of the row it replaces; those
        rowids are deleted and the new versions appended. Keys in the table
        are unique (they are the primary key), so each delta row matches at
        most one row.
        """
        t = quote_ident(table)
        names = [n for n, _ in columns]
        cols = ", ".join(quote_ident(n) for n in names)
        pk = ", ".join(quote_ident(c) for c in primary_key)
        order = f"ORDER BY {quote_ident(cursor)} DESC" if cursor else ""
        gone = _gone(soft_delete, columns, "d") if soft_delete else "FALSE"
        # IS DISTINCT FROM compares NULLs as equal (as EXCEPT does).
        differs = " OR ".join(
            f"d.{quote_ident(n)} IS DISTINCT FROM t.{quote_ident(n)}" for n in names
        )
        # A column named rowid hides DuckDB's pseudo-column: delete by key then.
        by_rowid = "rowid" not in {n.lower() for n in names}
        found = "t.rowid" if by_rowid else f"t.{quote_ident(primary_key[0])}"
        rowid = " t.rowid AS __rowid," if by_rowid else ""
        if by_rowid:
            delete = f"DELETE FROM {t} WHERE rowid IN (SELECT __rowid FROM {_WRITTEN})"
        else:
            delete = (
                f"DELETE FROM {t} USING (SELECT {pk} FROM {_WRITTEN}) k"
                f" WHERE {_join(primary_key, t, 'k')}"
            )
        statements = [
            # The collapsed delta is the join's build side; the table is probed.
            "CREATE OR REPLACE TEMP TABLE __delta AS"
            f" SELECT d.*, {found} IS NOT NULL AS __found,{rowid} ({gone}) AS __gone,"
            f" CASE WHEN {found} IS NULL THEN NOT ({gone}) ELSE ({gone}) OR {differs} END"
            " AS __write"
            f" FROM ({_select(columns)}"
            f" QUALIFY row_number() OVER (PARTITION BY {pk} {order}) = 1) d"
            f" LEFT JOIN {t} t ON {_join(primary_key, 'd', 't')}",
            delete,
            f"INSERT INTO {t} ({cols}) SELECT {cols} FROM __delta WHERE __write AND NOT __gone",
        ]
        if soft_delete:
            statements.append("SELECT count(*) FROM __delta WHERE __write AND __gone AND __found")
        if self.track_changes:
            statements += self._record(
                table, primary_key, f"SELECT {pk} FROM __delta WHERE __write"
            )
        statements.append("DROP TABLE __delta")
        results = self._run(batches, statements)
        read, removed, inserted = (int(r or 0) for r in results[:3])  # type: ignore[call-overload]
        deleted = int(results[3] or 0) if soft_delete else 0  # type: ignore[call-overload]
        if table in self._rows:
            self._rows[table] += inserted - removed
        return MergeResult(read=read, upserted=inserted, deleted=deleted)

    # -- lake mode: what changed since the last lake commit ----------------------

    @staticmethod
    def _changes(table: str) -> str:
        return f"{CHANGES}.{quote_ident(table)}"

    def _record(self, table: str, primary_key: Sequence[str], keys_sql: str) -> list[str]:
        """Statements recording the keys `keys_sql` selects as changed."""
        pk = ", ".join(quote_ident(c) for c in primary_key)
        return [
            f"CREATE TABLE IF NOT EXISTS {self._changes(table)} AS"
            f" SELECT {pk} FROM {quote_ident(table)} LIMIT 0",
            f"INSERT INTO {self._changes(table)} {keys_sql}",
        ]

    def _pending_whole(self, table: str) -> bool:
        found = self.con.execute(f"SELECT count(*) FROM {FULL} WHERE table_name = ?", [table])
        return bool(found.fetchall()[0][0])

    def pending_changes(self) -> tuple[set[str], set[str]]:
        """(tables to send whole, tables with changed keys) since the last clear."""
        full = {str(r[0]) for r in self.con.execute(f"SELECT table_name FROM {FULL}").fetchall()}
        rows = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            f" AND schema_name = {_literal(CHANGES)} AND table_name <> '__full'"
        ).fetchall()
        keyed = set()
        for (name,) in rows:
            count = self.con.execute(f"SELECT count(*) FROM {self._changes(name)}").fetchall()
            if count[0][0]:
                keyed.add(str(name))
        return full, keyed - full

    def export_changes(
        self, table: str, primary_key: Sequence[str], dest: Path, *, full: bool
    ) -> dict[str, str]:
        """Parquet files for the lake: the whole table, or the changed keys and
        the current rows of those keys still present."""
        dest.mkdir(parents=True, exist_ok=True)
        t = quote_ident(table)
        if full:
            path = dest / f"{table}.full.parquet"
            self._copy(f"SELECT * FROM {t}", path)
            return {"full": str(path)}
        pk = ", ".join(quote_ident(c) for c in primary_key)
        keys, rows = dest / f"{table}.keys.parquet", dest / f"{table}.rows.parquet"
        self._copy(f"SELECT DISTINCT {pk} FROM {self._changes(table)}", keys)
        self._copy(
            f"SELECT * FROM {t} t WHERE EXISTS (SELECT 1 FROM {self._changes(table)} k"
            f" WHERE {_join(primary_key, 't', 'k')})",
            rows,
        )
        return {"keys": str(keys), "rows": str(rows)}

    def _copy(self, query: str, path: Path) -> None:
        self.con.execute(f"COPY ({query}) TO {_literal(str(path))} (FORMAT parquet)").fetchall()

    def clear_changes(self, tables: Sequence[str]) -> None:
        """Forget what was sent (after the lake commit and the manifest)."""
        self.con.execute("BEGIN").fetchall()
        for table in tables:
            self.con.execute(f"DROP TABLE IF EXISTS {self._changes(table)}").fetchall()
            self.con.execute(f"DELETE FROM {FULL} WHERE table_name = ?", [table]).fetchall()
        self.con.execute("COMMIT").fetchall()

    def mark_full(self, tables: Sequence[str]) -> None:
        """Send these tables whole on the next lake commit (after a rollback)."""
        for table in tables:
            self.con.execute(f"INSERT OR IGNORE INTO {FULL} VALUES (?)", [table]).fetchall()

    def reconcile(self, table: str, keys: pa.RecordBatchReader, primary_key: Columns) -> int:
        """Delete rows whose key is no longer in the source (hard deletes).

        `primary_key` gives each key column's DuckDB type (None: keep the Arrow type).
        """
        t = quote_ident(table)
        names = [n for n, _ in primary_key]
        gone = (
            f"FROM {t} t WHERE NOT EXISTS (SELECT 1 FROM __keys k WHERE {_join(names, 'k', 't')})"
        )
        pk = ", ".join(f"t.{quote_ident(n)}" for n in names)
        record = self._record(table, names, f"SELECT {pk} {gone}") if self.track_changes else []
        results = self._run(
            keys,
            [
                f"CREATE OR REPLACE TEMP TABLE __keys AS {_select(primary_key)}",
                *record,  # before the delete: the keys it removes
                f"DELETE {gone}",
                "DROP TABLE __keys",
            ],
        )
        removed = int(results[1 + len(record)] or 0)  # type: ignore[call-overload]
        if table in self._rows:
            self._rows[table] -= removed
        return removed
