"""The ETL's working DuckDB database: where source rows land and merge.

Tables carry no PRIMARY KEY constraint: building and maintaining the ART
index costs about a third of a full load and is copied into every snapshot,
while the merge below only needs hash joins on the key columns, whose cost
is dominated by the delta (see docs/architecture.md, ETL section).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

__all__ = ["MergeResult", "Warehouse", "ident"]

Columns = Sequence[tuple[str, str | None]]


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select(columns: Columns, source: str = "__incoming") -> str:
    cols = ", ".join(
        f"CAST({ident(n)} AS {t}) AS {ident(n)}" if t else ident(n) for n, t in columns
    )
    return f"SELECT {cols} FROM {source}"


def _join(pk: Sequence[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{ident(c)} = {right}.{ident(c)}" for c in pk)


def _gone(soft_delete: str, columns: Columns, alias: str) -> str:
    """True for a soft-deleted row: a set boolean flag, or any value in another type."""
    sd = f"{alias}.{ident(soft_delete)}"
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
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path))
        # Where a crash between merging and publishing is remembered.
        self.unpublished_marker = self.path.with_name(self.path.name + ".unpublished")

    def close(self) -> None:
        self.con.close()

    # -- inspection ---------------------------------------------------------

    def has_table(self, table: str) -> bool:
        row = self.con.execute(
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = 'main' AND table_name = ?",
            [table],
        ).fetchall()
        return bool(row and row[0][0])

    def row_count(self, table: str) -> int:
        rows = self.con.execute(f"SELECT count(*) FROM {ident(table)}").fetchall()
        return int(rows[0][0])

    def columns(self, table: str) -> list[tuple[str, str]]:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return [(str(n), str(t)) for n, t in rows]

    def max_value(self, table: str, column: str) -> str | None:
        row = self.con.execute(
            f"SELECT max({ident(column)})::VARCHAR FROM {ident(table)}"
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
        staging = ident(f"__load_{table}")
        existed = self.has_table(table)
        same_shape = existed and [n for n, _ in self.columns(table)] == [n for n, _ in columns]
        statements = [
            f"DROP TABLE IF EXISTS {staging}",
            f"CREATE TABLE {staging} AS {_select(columns)}"
            + (f" WHERE NOT ({_gone(soft_delete, columns, '__incoming')})" if soft_delete else ""),
        ]
        if detect_changes and same_shape:
            statements.append(
                "SELECT EXISTS (SELECT 1 FROM ("
                f"(SELECT * FROM {staging} EXCEPT ALL SELECT * FROM {ident(table)})"
                f" UNION ALL (SELECT * FROM {ident(table)} EXCEPT ALL SELECT * FROM {staging})"
                "))"
            )
        statements += [
            f"DROP TABLE IF EXISTS {ident(table)}",
            f"ALTER TABLE {staging} RENAME TO {ident(table)}",
        ]
        results = self._run(batches, statements)
        changed = bool(results[2]) if detect_changes and same_shape else True
        return self.row_count(table), changed

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
        """
        t = ident(table)
        names = [n for n, _ in columns]
        cols = ", ".join(ident(n) for n in names)
        pk = ", ".join(ident(c) for c in primary_key)
        order = f"ORDER BY {ident(cursor)} DESC" if cursor else ""
        gone = _gone(soft_delete, columns, "d") if soft_delete else "FALSE"
        statements = [
            "CREATE OR REPLACE TEMP TABLE __delta AS "
            f"{_select(columns)} QUALIFY row_number() OVER (PARTITION BY {pk} {order}) = 1",
            "SELECT count(*) FROM __delta",
            # New or different rows (EXCEPT compares NULLs as equal).
            "CREATE OR REPLACE TEMP TABLE __changed AS "
            f"SELECT {cols} FROM __delta EXCEPT "
            f"SELECT {', '.join(f't.{ident(n)}' for n in names)} FROM {t} t"
            f" SEMI JOIN __delta d ON {_join(primary_key, 't', 'd')}",
            f"CREATE OR REPLACE TEMP TABLE __gone AS SELECT {pk} FROM __delta d WHERE {gone}",
            f"SELECT count(*) FROM {t} t SEMI JOIN __gone g ON {_join(primary_key, 't', 'g')}",
            f"DELETE FROM {t} USING (SELECT {pk} FROM __changed UNION SELECT {pk} FROM __gone) k"
            f" WHERE {_join(primary_key, t, 'k')}",
            f"INSERT INTO {t} ({cols}) SELECT {cols} FROM __changed d WHERE NOT ({gone})",
        ]
        results = self._run(batches, statements)
        for temp in ("__delta", "__changed", "__gone"):
            self.con.execute(f"DROP TABLE IF EXISTS {temp}").fetchall()
        return MergeResult(
            read=int(results[1] or 0),  # type: ignore[call-overload]
            upserted=int(results[6] or 0),  # type: ignore[call-overload]
            deleted=int(results[4] or 0),  # type: ignore[call-overload]
        )

    def reconcile(self, table: str, keys: pa.RecordBatchReader, primary_key: Sequence[str]) -> int:
        """Delete rows whose key is no longer in the source (hard deletes)."""
        t = ident(table)
        pk = ", ".join(ident(c) for c in primary_key)
        results = self._run(
            keys,
            [
                f"CREATE OR REPLACE TEMP TABLE __keys AS SELECT {pk} FROM __incoming",
                f"DELETE FROM {t} t WHERE NOT EXISTS"
                f" (SELECT 1 FROM __keys k WHERE {_join(primary_key, 'k', 't')})",
            ],
        )
        self.con.execute("DROP TABLE IF EXISTS __keys").fetchall()
        return int(results[1] or 0)  # type: ignore[call-overload]
