"""The writer's commands: commit a cycle's changes, maintain, restore.

`publish` commits every table of one cycle in ONE DuckLake transaction, so
the snapshot id names a consistent state of all tables. A table arrives as
Parquet files the ETL exported from its working DuckDB:

    {"name", "primary_key": [...], "full": path}        the whole table (first
                                                         load, reload, schema change)
    {"name", "primary_key": [...], "keys": path, "rows": path}
                                                         the keys that changed and
                                                         the current rows of those
                                                         still present

A whole table sent with "unless_equal": true (the models' definitions, which
an ETL re-sends after a restart) is not written when the lake already holds
exactly those rows, so a re-send makes no change for replicas to follow.

A delta is applied by state, not by history: keys without a row are deleted
(`DELETE ... USING`), rows are merged (`MERGE`; DuckLake refuses a MERGE
with both an update and a delete action). Applying the same files twice
gives the same table, so a crash between this commit and the manifest is
repaired by the next cycle re-sending the same keys.
"""

from __future__ import annotations

from typing import Any

import duckdb

from analytics_lake.connection import connect, quote_ident, quote_literal
from analytics_lake.fault_points import pause_point

__all__ = ["MAINTENANCE_AUTHOR", "maintain", "publish", "restore"]


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in con.execute(f"DESCRIBE {relation}").fetchall()]


def _lake_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]] | None:
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns()"
        " WHERE database_name = 'lake' AND schema_name = 'main' AND table_name = ?"
        " ORDER BY column_index",
        [table],
    ).fetchall()
    return [(str(n), str(t)) for n, t in rows] or None


def _join(pk: list[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{quote_ident(c)} = {right}.{quote_ident(c)}" for c in pk)


def _same_rows(con: duckdb.DuckDBPyConnection, table: str, source: str) -> bool:
    differ = con.execute(
        f"SELECT (SELECT count(*) FROM (FROM {table} EXCEPT ALL FROM {source}))"
        f" + (SELECT count(*) FROM (FROM {source} EXCEPT ALL FROM {table}))"
    ).fetchall()
    return int(differ[0][0]) == 0


def _load_full(con: duckdb.DuckDBPyConnection, table: dict[str, Any]) -> dict[str, Any]:
    t = f"lake.main.{quote_ident(table['name'])}"
    source = f"read_parquet({quote_literal(table['full'])})"
    incoming = _columns(con, f"SELECT * FROM {source}")
    held = _lake_columns(con, table["name"])
    if held == incoming and table.get("unless_equal") and _same_rows(con, t, source):
        return {"mode": "unchanged", "deleted": 0, "upserted": 0}
    if held == incoming:
        # Same shape: the table keeps its identity, replicas follow the change feed.
        deleted = con.execute(f"DELETE FROM {t}").fetchall()[0][0]
        inserted = con.execute(f"INSERT INTO {t} SELECT * FROM {source}").fetchall()[0][0]
    else:
        # A new or reshaped table; replicas see the schema change and bootstrap.
        deleted = 0
        con.execute(f"DROP TABLE IF EXISTS {t}")
        inserted = con.execute(f"CREATE TABLE {t} AS SELECT * FROM {source}").fetchall()[0][0]
    return {"mode": "full", "deleted": int(deleted or 0), "upserted": int(inserted or 0)}


def _merge_delta(con: duckdb.DuckDBPyConnection, table: dict[str, Any]) -> dict[str, Any]:
    t = f"lake.main.{quote_ident(table['name'])}"
    pk: list[str] = table["primary_key"]
    keys = ", ".join(quote_ident(c) for c in pk)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __rows AS FROM read_parquet({quote_literal(table['rows'])})"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __gone AS SELECT DISTINCT {keys}"
        f" FROM read_parquet({quote_literal(table['keys'])}) k"
        f" WHERE NOT EXISTS (SELECT 1 FROM __rows r WHERE {_join(pk, 'r', 'k')})"
    )
    deleted = con.execute(f"DELETE FROM {t} AS t USING __gone AS g WHERE {_join(pk, 't', 'g')}")
    n_deleted = int(deleted.fetchall()[0][0] or 0)
    names = [n for n, _ in _columns(con, "__rows")]
    updates = ", ".join(f"{quote_ident(n)} = d.{quote_ident(n)}" for n in names if n not in pk)
    cols = ", ".join(quote_ident(n) for n in names)
    values = ", ".join(f"d.{quote_ident(n)}" for n in names)
    matched = f"WHEN MATCHED THEN UPDATE SET {updates} " if updates else ""
    merged = con.execute(
        f"MERGE INTO {t} AS t USING __rows AS d ON {_join(pk, 't', 'd')} "
        f"{matched}WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})"
    )
    n_merged = int(merged.fetchall()[0][0] or 0)
    con.execute("DROP TABLE __rows")
    con.execute("DROP TABLE __gone")
    return {"mode": "delta", "deleted": n_deleted, "upserted": n_merged}


def _current_snapshot(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT id FROM lake.current_snapshot()").fetchall()[0][0])


def publish(request: dict[str, Any]) -> dict[str, Any]:
    tables: list[dict[str, Any]] = request["tables"]
    con = connect(request["lake"])
    try:
        before = _current_snapshot(con)
        applied: dict[str, Any] = {}
        if tables:
            con.execute("BEGIN")
            for table in tables:
                applied[table["name"]] = (
                    _load_full(con, table) if table.get("full") else _merge_delta(con, table)
                )
            pause_point("before-commit")  # files written, nothing committed
            con.execute("COMMIT")
        snapshot = _current_snapshot(con)
        pause_point("after-commit")  # committed; the ETL has not written the manifest
        return {"snapshot_id": snapshot, "previous_snapshot_id": before, "tables": applied}
    finally:
        con.close()


MAINTENANCE_AUTHOR = "analytics-maintenance"
# Maintenance runs between the ETL's cycles, never beside a commit of its own,
# but an hour's margin keeps even a misconfigured second writer's files safe.
ORPHAN_GRACE_SECONDS = 3600


def _maintenance_step(con: duckdb.DuckDBPyConnection, name: str, call: str) -> int:
    """One maintenance call in its own snapshot, signed so replicas skip it
    (a flush's snapshot otherwise looks like a data delete)."""
    con.execute("BEGIN")
    try:
        con.execute(
            f"CALL ducklake_set_commit_message('lake', {quote_literal(MAINTENANCE_AUTHOR)},"
            f" {quote_literal(name)})"
        )
        n = int(con.execute(f"SELECT count(*) FROM {call}").fetchall()[0][0])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return n


def maintain(request: dict[str, Any]) -> dict[str, Any]:
    """Flush inlined rows to files, merge small files, expire snapshots older
    than the retention, delete the files no snapshot needs any more, and the
    orphans: files a killed commit wrote but never committed, once older than
    `orphan_grace_seconds` (a commit in progress writes its files first).

    Snapshots from `keep_from` on (the one the manifest names) are never
    expired, however old: a host that bootstraps now needs that snapshot, and
    a quiet source leaves it as the newest data for longer than the retention.
    """
    seconds = int(request["retention_seconds"])
    older = f"now() - INTERVAL {seconds} SECOND"
    con = connect(request["lake"])
    try:
        out: dict[str, Any] = {
            "flushed": _maintenance_step(con, "flushed", "ducklake_flush_inlined_data('lake')"),
            "merged": _maintenance_step(con, "merged", "ducklake_merge_adjacent_files('lake')"),
        }
        keep_from = request.get("keep_from")
        expired = con.execute(
            "SELECT snapshot_id FROM ducklake_snapshots('lake')"
            f" WHERE snapshot_time < {older} AND snapshot_id < ?"
            " ORDER BY snapshot_id",
            [int(keep_from) if keep_from is not None else _current_snapshot(con)],
        ).fetchall()
        ids = ", ".join(str(int(r[0])) for r in expired)
        out["expired"] = (
            _maintenance_step(
                con, "expired", f"ducklake_expire_snapshots('lake', versions => [{ids}])"
            )
            if ids
            else 0
        )
        out["deleted_files"] = _maintenance_step(
            con, "deleted_files", f"ducklake_cleanup_old_files('lake', older_than => {older})"
        )
        grace = int(request.get("orphan_grace_seconds", ORPHAN_GRACE_SECONDS))
        out["deleted_orphans"] = _maintenance_step(
            con,
            "deleted_orphans",
            "ducklake_delete_orphaned_files('lake',"
            f" older_than => now() - INTERVAL {grace} SECOND)",
        )
        out["snapshot_id"] = _current_snapshot(con)
        return out
    finally:
        con.close()


def _existed(con: duckdb.DuckDBPyConnection, table: str, snapshot_id: int) -> bool:
    try:
        con.execute(
            f"SELECT 1 FROM lake.main.{quote_ident(table)} AT (VERSION => {snapshot_id}) LIMIT 0"
        ).fetchall()
    except duckdb.CatalogException:
        return False
    return True


def restore(request: dict[str, Any]) -> dict[str, Any]:
    """A new snapshot whose tables equal those at `snapshot_id` (rollback moves
    forward: the history replicas follow is never rewritten). A table named in
    `empty_if_absent` that did not exist at `snapshot_id` is emptied."""
    target = int(request["snapshot_id"])
    con = connect(request["lake"])
    try:
        known = con.execute(
            "SELECT count(*) FROM ducklake_snapshots('lake') WHERE snapshot_id = ?", [target]
        ).fetchall()[0][0]
        if not known:
            raise ValueError(
                f"snapshot {target} is not in the lake (never committed, or expired by the"
                " retention)"
            )
        # The old rows are read before the transaction: read after its DELETE,
        # `AT (VERSION => ...)` misses the rows deleted in the same transaction.
        optional = set(request.get("empty_if_absent") or [])
        for n, name in enumerate(request["tables"]):
            t = f"lake.main.{quote_ident(name)}"
            if name in optional and not _existed(con, name, target):
                con.execute(f"CREATE TEMP TABLE __restore_{n} AS SELECT * FROM {t} LIMIT 0")
                continue
            con.execute(
                f"CREATE TEMP TABLE __restore_{n} AS SELECT * FROM {t} AT (VERSION => {target})"
            )
        con.execute("BEGIN")
        con.execute(
            f"CALL ducklake_set_commit_message('lake', 'analytics-etl rollback',"
            f" {quote_literal(f'rollback to snapshot {target}')})"
        )
        for n, name in enumerate(request["tables"]):
            t = f"lake.main.{quote_ident(name)}"
            con.execute(f"DELETE FROM {t}")
            con.execute(f"INSERT INTO {t} SELECT * FROM __restore_{n}")
        con.execute("COMMIT")
        return {"snapshot_id": _current_snapshot(con)}
    finally:
        con.close()
