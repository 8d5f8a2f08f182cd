"""Exporting a compact, self-contained snapshot file from the working DuckDB.

The working file grows under repeated merges (DuckDB reuses freed blocks but
rarely shrinks); copying the database into a fresh file writes only live data.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import duckdb
from analytics_shared.manifest import sha256_file

__all__ = ["SnapshotFile", "export_snapshot"]


@dataclass(frozen=True)
class SnapshotFile:
    path: Path
    sha256: str
    size: int


def export_snapshot(con: duckdb.DuckDBPyConnection, dest: Path) -> SnapshotFile:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        dest.unlink()
    row = con.execute("SELECT current_database()").fetchone()
    source_db = row[0] if row else "memory"
    con.execute(f"ATTACH '{dest.as_posix()}' AS __snapshot")
    try:
        con.execute(f'COPY FROM DATABASE "{source_db}" TO __snapshot')
    finally:
        con.execute("DETACH __snapshot")
    return SnapshotFile(dest, sha256_file(dest), dest.stat().st_size)
