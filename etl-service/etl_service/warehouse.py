"""The ETL's working DuckDB database: where source rows land and merge.

Tables carry no PRIMARY KEY constraint: building and maintaining the ART
index costs about a third of a full load and is copied into every snapshot,
while the merge below only needs hash joins on the key columns, whose cost
is dominated by the delta (see docs/architecture.md, ETL section).

All writes to the working tables go through this class: it keeps their row
counts (a `count(*)` after deletes scans the table).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from analytics_shared.logging_config import get_logger
from analytics_shared.snapshot_file import quote_ident

__all__ = ["MergeResult", "Warehouse"]

log = get_logger(__name__)

Columns = Sequence[tuple[str, str | None]]

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
    def __init__(self, path: Path, config: Mapping[str, str | int] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # DuckDB settings for every connection (memory_limit, threads, temp_directory).
        self.config: dict[str, str | bool | int | float | list[str]] = dict(config or {})
        self.con = duckdb.connect(str(self.path), config=self.config)
        # Where a crash between merging and publishing is remembered.
        self.unpublished_marker = self.path.with_name(self.path.name + ".unpublished")
        self._rows: dict[str, int] = {}  # row counts known from the last write

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

    def max_value(self, table: str, column: str) -> str | None:
        row = self.con.execute(
            f"SELECT max({quote_ident(column)})::VARCHAR FROM {quote_ident(table)}"
        ).fetchall()
        return None if not row or row[0][0] is None else str(row[0][0])

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT").fetchall()

    # -- loading ----------------------------------------------------------------

    def _run(self, batches: pa.RecordBatchReader, statements: Sequence[str]) -> list[object]:
        """Run statements in one transaction with `batches` visible as __incoming."""
        self.con.register("__incoming", batches)
        results: list[object] = []
        try:
            self.con.execute("BEGIN").fetchall()
            for sql in statements:
                rows = self.con.execute(sql).fetchall()
                results.append(rows[0][0] if rows and rows[0] else None)
            self.con.execute("COMMIT").fetchall()
        except BaseException:
            # A failed COMMIT (e.g. no space left for the WAL) has already ended
            # the transaction: keep its error, not ROLLBACK's "no transaction".
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK").fetchall()
            raise
        finally:
            self.con.unregister("__incoming")
        return results

    def replace_table(
        self,
        table: str,
        batches: pa.RecordBatchReader,
        columns: Columns,
        *,
        detect_changes: bool = False,
        soft_delete: str | None = None,
    ) -> tuple[int, bool]:
        """Load a whole table from a batch stream and swap it in atomically.

        `columns` gives each column's DuckDB type (None: keep the Arrow type).
        Returns (rows, changed); `changed` compares with the old contents
        only when asked (it costs a pass over both copies).
        """
        staging, target = quote_ident(f"__load_{table}"), quote_ident(table)
        held = [n for n, _ in self.columns(table)]
        same_shape = bool(held) and held == [n for n, _ in columns]
        statements = [
            f"DROP TABLE IF EXISTS {staging}",
            f"CREATE TABLE {staging} AS {_select(columns)}"
            + (f" WHERE NOT ({_gone(soft_delete, columns, '__incoming')})" if soft_delete else ""),
        ]
        if detect_changes and same_shape:
            statements.append(
                "SELECT EXISTS (SELECT 1 FROM ("
                f"(SELECT * FROM {staging} EXCEPT ALL SELECT * FROM {target})"
                f" UNION ALL (SELECT * FROM {target} EXCEPT ALL SELECT * FROM {staging})"
                "))"
            )
        statements += [
            f"DROP TABLE IF EXISTS {target}",
            f"ALTER TABLE {staging} RENAME TO {target}",
        ]
        self._rows.pop(table, None)
        # The stream comes from one extractor thread, and one DuckDB thread
        # keeps up with it; a second only competes with the extractor and the
        # source for cores (measured: less CPU, ~5% faster on 2 cores).
        threads = self.con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        self.con.execute("SET threads = 1").fetchall()
        try:
            results = self._run(batches, statements)
        finally:
            self.con.execute(f"SET threads = {int(threads)}").fetchall()
        rows = int(results[1] or 0)  # type: ignore[call-overload]  # CREATE TABLE AS: its row count
        self._rows[table] = rows
        changed = bool(results[2]) if detect_changes and same_shape else True
        return rows, changed

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
        statements.append("DROP TABLE __delta")
        results = self._run(batches, statements)
        read, removed, inserted = (int(r or 0) for r in results[:3])  # type: ignore[call-overload]
        deleted = int(results[3] or 0) if soft_delete else 0  # type: ignore[call-overload]
        if table in self._rows:
            self._rows[table] += inserted - removed
        return MergeResult(read=read, upserted=inserted, deleted=deleted)

    def reconcile(self, table: str, keys: pa.RecordBatchReader, primary_key: Columns) -> int:
        """Delete rows whose key is no longer in the source (hard deletes).

        `primary_key` gives each key column's DuckDB type (None: keep the Arrow type).
        """
        t = quote_ident(table)
        names = [n for n, _ in primary_key]
        results = self._run(
            keys,
            [
                f"CREATE OR REPLACE TEMP TABLE __keys AS {_select(primary_key)}",
                f"DELETE FROM {t} t WHERE NOT EXISTS"
                f" (SELECT 1 FROM __keys k WHERE {_join(names, 'k', 't')})",
                "DROP TABLE __keys",
            ],
        )
        removed = int(results[1] or 0)  # type: ignore[call-overload]
        if table in self._rows:
            self._rows[table] -= removed
        return removed
