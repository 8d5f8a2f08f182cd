"""The replica's commands: a local DuckDB file advanced by the lake's change feed.

Data files are read from a local mirror of the store (`mirror`), which the
API host fills with exactly the files the catalog names (`files`), so a cycle
moves only the new files to the host. The replica is keyed on the primary
key, never on DuckLake's row ids (compaction renumbers them, even at old
versions), and snapshots that only rearrange files (flush, merge, rewrite)
are skipped: their change feed shows phantom rows. A snapshot that changes a
table's shape, or anything not understood, asks for a fresh bootstrap.

Apply rule per table and contiguous range of data snapshots: delete every
key the range touched, then insert each key's row image from the newest
snapshot that touched it, if that is an insert or an update's post-image.
Applying a range twice gives the same file, so the caller may record the
new snapshot id after the commit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb

from analytics_lake.connection import connect, quote_ident, quote_literal
from analytics_lake.publish import MAINTENANCE_AUTHOR

__all__ = ["advance", "bootstrap", "export", "plan"]

# Snapshot change kinds that change rows (the feed is followed) ...
DATA_CHANGES = {"tables_inserted_into", "tables_deleted_from", "inlined_insert", "inlined_delete"}
# ... and those that only rearrange files (skipped).
MAINTENANCE_CHANGES = {
    "maintenance",
    "merge_adjacent",
    "rewrite_delete",
    "flush_inlined",
    "compacted_table",
    "merge_adjacent_files",
    "flushed_inlined",
}


def _reader(request: dict[str, Any]) -> duckdb.DuckDBPyConnection:
    mirror = str(request["mirror"]).rstrip("/") + "/"
    return connect(request["lake"], read_only=True, data_path=mirror)


def _history(con: duckdb.DuckDBPyConnection, after: int) -> list[tuple[int, list[str]]]:
    rows = con.execute(
        "SELECT snapshot_id, map_keys(changes), author IS NOT DISTINCT FROM ?"
        " FROM ducklake_snapshots('lake') WHERE snapshot_id > ? ORDER BY snapshot_id",
        [MAINTENANCE_AUTHOR, after],
    ).fetchall()
    # A signed maintenance snapshot counts as maintenance whatever its change kinds.
    return [
        (int(sid), ["maintenance"] if ours else [str(k) for k in keys or []])
        for sid, keys, ours in rows
    ]


def _files(
    con: duckdb.DuckDBPyConnection, mirror: str, tables: list[str], sid: int
) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in tables:
        try:
            rows = con.execute(
                "SELECT data_file, data_file_size_bytes, delete_file, delete_file_size_bytes"
                " FROM ducklake_list_files('lake', ?, snapshot_version => ?)",
                [table, sid],
            ).fetchall()
        except duckdb.Error:
            continue  # the table did not exist at that snapshot
        for data, dsize, delete, xsize in rows:
            for path, size in ((data, dsize), (delete, xsize)):
                if path:
                    out[str(path).removeprefix(mirror)] = int(size or 0)
    return out


def plan(request: dict[str, Any]) -> dict[str, Any]:
    """What advancing from `after` (None: bootstrap) to `to` needs.

    `kept`: `after` is still a snapshot of the lake (else: bootstrap);
    `files`: {path relative to the data path: size} of every data and delete
    file the tables use at any snapshot in (after, to] (what the mirror must
    hold); `target_files`: those used at `to` (what it keeps afterwards)."""
    mirror = str(request["mirror"]).rstrip("/") + "/"
    tables: list[str] = request["tables"]
    to = int(request["to"])
    after = request.get("after")
    con = _reader(request)
    try:
        current = int(con.execute("SELECT id FROM lake.current_snapshot()").fetchall()[0][0])
        kept = after is not None and bool(
            con.execute(
                "SELECT count(*) FROM ducklake_snapshots('lake') WHERE snapshot_id = ?", [after]
            ).fetchall()[0][0]
        )
        history = [h for h in _history(con, int(after or 0)) if h[0] <= to] if kept else []
        target = _files(con, mirror, tables, to)
        needed = dict(target)
        for sid, kinds in history:
            if sid != to and not set(kinds) <= MAINTENANCE_CHANGES:
                needed.update(_files(con, mirror, tables, sid))
        return {
            "current": current,
            "kept": kept,
            "snapshots": history,
            "files": needed,
            "target_files": target,
        }
    finally:
        con.close()


def _fresh(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)


def bootstrap(request: dict[str, Any]) -> dict[str, Any]:
    """A new replica file with every table as of `snapshot_id` (written aside, then renamed)."""
    dest = Path(request["replica"])
    tmp = dest.with_name(dest.name + ".tmp")
    _fresh(tmp)
    sid = int(request["snapshot_id"])
    con = _reader(request)
    counts = {}
    try:
        con.execute(f"ATTACH {quote_literal(str(tmp))} AS rep")
        for table in request["tables"]:
            t = quote_ident(table)
            counts[table] = con.execute(
                f"CREATE TABLE rep.{t} AS SELECT * FROM lake.main.{t} AT (VERSION => {sid})"
            ).fetchall()[0][0]
        con.execute("DETACH rep")
    finally:
        con.close()
    _fresh(dest)
    os.replace(tmp, dest)
    return {"snapshot_id": sid, "rows": counts}


def _ranges(history: list[tuple[int, list[str]]]) -> tuple[list[tuple[int, int]], str | None]:
    """Contiguous ranges of data snapshots; the reason to bootstrap instead, if any."""
    ranges: list[tuple[int, int]] = []
    start = end = None
    for sid, keys in history:
        kinds = set(keys)
        if kinds <= MAINTENANCE_CHANGES:
            if start is not None:
                ranges.append((start, end))  # type: ignore[arg-type]
                start = end = None
            continue
        if not kinds <= DATA_CHANGES:
            return [], f"snapshot {sid} changes {sorted(kinds - DATA_CHANGES)}"
        start = sid if start is None else start
        end = sid
    if start is not None:
        ranges.append((start, end))  # type: ignore[arg-type]
    return ranges, None


def advance(request: dict[str, Any]) -> dict[str, Any]:
    """Apply the changes (from, to] to the replica file in one transaction."""
    lo, hi = int(request["from"]), int(request["to"])
    tables: dict[str, list[str]] = request["tables"]
    con = _reader(request)
    try:
        history = [h for h in _history(con, lo) if h[0] <= hi]
        ranges, reason = _ranges(history)
        if reason:
            return {"bootstrap_needed": reason}
        con.execute(f"ATTACH {quote_literal(str(request['replica']))} AS rep")
        changed = {}
        con.execute("BEGIN")
        for table, pk in tables.items():
            changed[table] = 0
            for start, end in ranges:
                changed[table] += _apply(con, table, pk, start, end)
        con.execute("COMMIT")
        con.execute("DETACH rep")  # checkpoints: the file is self-contained
        return {"snapshot_id": hi, "ranges": ranges, "changes": changed}
    finally:
        con.close()


def _apply(con: duckdb.DuckDBPyConnection, table: str, pk: list[str], lo: int, hi: int) -> int:
    t = quote_ident(table)
    keys = ", ".join(quote_ident(c) for c in pk)
    join = " AND ".join(f"r.{quote_ident(c)} = k.{quote_ident(c)}" for c in pk)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE __changes AS"
        f" FROM ducklake_table_changes('lake', 'main', {quote_literal(table)}, {lo}, {hi})"
    )
    n = int(con.execute("SELECT count(*) FROM __changes").fetchall()[0][0])
    if n:
        con.execute(
            f"DELETE FROM rep.{t} AS r USING (SELECT DISTINCT {keys} FROM __changes) AS k"
            f" WHERE {join}"
        )
        con.execute(
            f"INSERT INTO rep.{t} SELECT * EXCLUDE (snapshot_id, rowid, change_type, __last)"
            f" FROM (SELECT *, max(snapshot_id) OVER (PARTITION BY {keys}) AS __last"
            " FROM __changes)"
            " WHERE snapshot_id = __last AND change_type IN ('insert', 'update_postimage')"
        )
    con.execute("DROP TABLE __changes")
    return n


def export(request: dict[str, Any]) -> dict[str, Any]:
    """One table as Parquet, as of `snapshot_id` or now (for checks and tests)."""
    t = quote_ident(request["table"])
    at = f" AT (VERSION => {int(request['snapshot_id'])})" if request.get("snapshot_id") else ""
    con = connect(request["lake"], read_only=True)
    try:
        con.execute(
            f"COPY (SELECT * FROM lake.main.{t}{at}) TO {quote_literal(request['path'])}"
            " (FORMAT parquet)"
        )
        return {"path": request["path"]}
    finally:
        con.close()
