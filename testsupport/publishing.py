"""The one way tests publish a snapshot: the ETL's own export and Publisher.

`publish_database` exports a working DuckDB connection with
`etl_service.export.export_snapshot` and publishes it with
`etl_service.publisher.Publisher`, so every test snapshot has the layout,
compression, manifest and commit point the ETL writes. Row counts are exact
and every table's columns are in the manifest (as `/schema` shows them).
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from analytics_shared.manifest import ColumnSchema, Manifest, TableInfo
from analytics_shared.object_store import LocalObjectStore, ObjectStore
from etl_service.export import export_snapshot
from etl_service.publisher import Publisher

__all__ = ["publish_database", "publish_file", "table_infos"]


def table_infos(con: duckdb.DuckDBPyConnection) -> dict[str, TableInfo]:
    """Exact row count and columns of every table of the main database."""
    names = [
        row[0]
        for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
            " ORDER BY table_name"
        ).fetchall()
    ]
    tables: dict[str, TableInfo] = {}
    for name in names:
        count = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        columns = con.execute(f'DESCRIBE "{name}"').fetchall()
        tables[name] = TableInfo(
            row_count=int(count[0]) if count else 0,
            columns=[ColumnSchema(name=c[0], type=c[1]) for c in columns],
        )
    return tables


def publish_database(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    work_dir: Path,
    *,
    publisher: Publisher | None = None,
) -> Manifest:
    """Export `con` as a compact snapshot and publish it as the current version."""
    work_dir.mkdir(parents=True, exist_ok=True)
    snapshot = export_snapshot(con, work_dir / f"snapshot-{time.time_ns()}.db")
    publisher = publisher or Publisher(store)
    return publisher.publish(snapshot, table_infos(con))


def publish_file(db_path: Path, store_root: Path, work_dir: Path) -> Manifest:
    """`publish_database` for a DuckDB file, into a local folder store."""
    con = duckdb.connect(str(db_path))
    try:
        return publish_database(con, LocalObjectStore(store_root), work_dir)
    finally:
        con.close()
