"""The lake's history as operators see it: its data snapshots, newest first.

A data snapshot is one the ETL committed (a cycle, a full load, a rollback);
maintenance snapshots (signed MAINTENANCE_AUTHOR) only rearrange files and
are not versions. Snapshots older than the retention are gone (expired).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import duckdb

from analytics_lake.connection import connect, quote_ident
from analytics_lake.publish import MAINTENANCE_AUTHOR

__all__ = ["snapshots"]


def _rows_at(con: duckdb.DuckDBPyConnection, tables: list[str], sid: int) -> dict[str, int | None]:
    rows: dict[str, int | None] = {}
    for table in tables:
        try:
            found = con.execute(
                f"SELECT count(*) FROM lake.main.{quote_ident(table)} AT (VERSION => {sid})"
            ).fetchall()
            rows[table] = int(found[0][0])
        except duckdb.Error:
            rows[table] = None  # the table did not exist at that snapshot
    return rows


def snapshots(request: dict[str, Any]) -> dict[str, Any]:
    """{"current": id, "snapshots": [{snapshot_id, time, message, rows}]}: the
    newest `limit` data snapshots, with each table's row count when `rows`."""
    tables: list[str] = request.get("tables") or []
    con = connect(request["lake"], read_only=True)
    try:
        current = int(con.execute("SELECT id FROM lake.current_snapshot()").fetchall()[0][0])
        found = con.execute(
            "SELECT snapshot_id, epoch(snapshot_time), commit_message"
            " FROM ducklake_snapshots('lake')"
            " WHERE author IS DISTINCT FROM ? AND snapshot_id > 0"
            " ORDER BY snapshot_id DESC LIMIT ?",
            [MAINTENANCE_AUTHOR, int(request.get("limit") or 50)],
        ).fetchall()
        listed = [
            {
                "snapshot_id": int(sid),
                "time": datetime.fromtimestamp(when, UTC).isoformat() if when else None,
                "message": message,
                "rows": _rows_at(con, tables, int(sid)) if request.get("rows", True) else None,
            }
            for sid, when, message in found
        ]
        return {"current": current, "snapshots": listed}
    finally:
        con.close()
