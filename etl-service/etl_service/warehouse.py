"""The ETL's working DuckDB database: where source rows land and merge."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

__all__ = ["Warehouse"]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Warehouse:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(str(self.path))

    def close(self) -> None:
        self.con.close()

    def replace_table(
        self, table: str, batches: pa.RecordBatchReader, columns: list[tuple[str, str | None]]
    ) -> int:
        """Load a whole table from a batch stream, swapping it in atomically.

        `columns` gives each column's DuckDB type (None: keep the Arrow type).
        """
        select = ", ".join(
            f"CAST({_ident(n)} AS {t}) AS {_ident(n)}" if t else _ident(n) for n, t in columns
        )
        staging = f"__load_{table}"
        self.con.register("__incoming", batches)
        try:
            self.con.execute("BEGIN")
            self.con.execute(f"DROP TABLE IF EXISTS {_ident(staging)}")
            self.con.execute(f"CREATE TABLE {_ident(staging)} AS SELECT {select} FROM __incoming")
            self.con.execute(f"DROP TABLE IF EXISTS {_ident(table)}")
            self.con.execute(f"ALTER TABLE {_ident(staging)} RENAME TO {_ident(table)}")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self.con.unregister("__incoming")
        return self.row_count(table)

    def row_count(self, table: str) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()
        return int(row[0]) if row else 0

    def columns(self, table: str) -> list[tuple[str, str]]:
        rows = self.con.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return [(str(n), str(t)) for n, t in rows]

    def max_value(self, table: str, column: str) -> str | None:
        row = self.con.execute(
            f"SELECT max({_ident(column)})::VARCHAR FROM {_ident(table)}"
        ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def checkpoint(self) -> None:
        self.con.execute("CHECKPOINT")
