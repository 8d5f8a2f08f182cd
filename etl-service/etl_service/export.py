"""Exporting a compact, self-contained snapshot file from the working DuckDB.

The working file grows under repeated merges (DuckDB reuses freed blocks but
rarely shrinks); copying the database into a fresh file writes only live data.
The export also fingerprints the contents, so a cycle that changed nothing
can skip publishing, and can be zstd-compressed for the upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import zstandard

from analytics_shared.manifest import sha256_file
from analytics_shared.snapshot_file import quote_ident, table_checksum

__all__ = [
    "SnapshotFile",
    "compress_snapshot",
    "content_fingerprint",
    "export_snapshot",
]

ZSTD_LEVEL = 3  # fast; higher levels gain little on DuckDB's already-encoded blocks


@dataclass(frozen=True)
class SnapshotFile:
    """A file ready to upload: `sha256`/`size` describe the bytes at `path`."""

    path: Path
    sha256: str
    size: int
    fingerprint: str | None = None
    compression: str | None = None  # None: a plain DuckDB file


def content_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """A hash of every table's schema and rows (independent of row order) and of
    every view's definition.

    Two 64-bit row hashes (different seeds) are xor-ed per table with the row
    count and column types; a changed, added or removed row changes it. DuckDB
    computes it in one scan per table, far cheaper than an export.
    """
    digest = hashlib.sha256()
    tables = con.execute(
        "SELECT schema_name, table_name, comment FROM duckdb_tables()"
        " WHERE database_name = current_database() AND NOT temporary"
        " ORDER BY schema_name, table_name"
    ).fetchall()
    for schema, table, comment in tables:
        columns = con.execute(
            "SELECT column_name, data_type FROM duckdb_columns()"
            " WHERE database_name = current_database() AND schema_name = ? AND table_name = ?"
            " ORDER BY column_index",
            [schema, table],
        ).fetchall()
        row = table_checksum(con, table, schema)
        digest.update(repr((schema, table, columns, row)).encode())
        if comment:  # a model's comment names its SQL file's hash
            digest.update(repr(comment).encode())
    # Views (models) hold no rows: their definitions are the content.
    views = con.execute(
        "SELECT schema_name, view_name, sql, comment FROM duckdb_views()"
        " WHERE database_name = current_database() AND NOT internal AND NOT temporary"
        " ORDER BY schema_name, view_name"
    ).fetchall()
    for view in views:
        digest.update(repr(view).encode())
    return digest.hexdigest()


def _remove(path: Path) -> None:
    for stale in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def export_snapshot(con: duckdb.DuckDBPyConnection, dest: Path) -> SnapshotFile:
    """Copy the working database into a fresh, checkpointed file at `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A process killed mid-export leaves a partial file and maybe a WAL; a WAL
    # next to a fresh file would be replayed into it, so both go first.
    tmp = dest.with_name(dest.name + ".tmp")
    _remove(tmp)
    _remove(dest)
    fingerprint = content_fingerprint(con)
    row = con.execute("SELECT current_database()").fetchone()
    source_db = row[0] if row else "memory"
    con.execute(f"ATTACH '{tmp.as_posix()}' AS __snapshot")
    try:
        con.execute(f"COPY FROM DATABASE {quote_ident(source_db)} TO __snapshot")
    finally:
        con.execute("DETACH __snapshot")  # checkpoints: the file is self-contained
    if tmp.with_name(tmp.name + ".wal").exists():
        raise RuntimeError(f"snapshot export left a WAL next to {tmp}")
    os.replace(tmp, dest)
    return SnapshotFile(dest, sha256_file(dest), dest.stat().st_size, fingerprint, None)


def compress_snapshot(snapshot: SnapshotFile, level: int = ZSTD_LEVEL) -> SnapshotFile:
    """zstd-compress next to the original (`.zst`); the frame carries a checksum."""
    if snapshot.compression is not None:
        raise ValueError(f"{snapshot.path} is already compressed ({snapshot.compression})")
    dest = snapshot.path.with_name(snapshot.path.name + ".zst")
    tmp = dest.with_name(dest.name + ".tmp")
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    with snapshot.path.open("rb") as src, tmp.open("wb") as out:
        compressor.copy_stream(src, out, size=snapshot.size)
    os.replace(tmp, dest)
    return replace(
        snapshot,
        path=dest,
        sha256=sha256_file(dest),
        size=dest.stat().st_size,
        compression="zstd",
    )
