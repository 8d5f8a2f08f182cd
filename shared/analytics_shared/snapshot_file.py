"""The published snapshot file, as both services handle it.

The ETL writes a DuckDB file (optionally zstd-compressed) and the manifest
records its size and sha256; every reader - the API, `analytics-etl
rollback`, the tests - checks those, decompresses, opens the file and probes
its row counts with the code below, so writer and readers can never disagree
on what "verified" means.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zstandard

from analytics_shared.errors import AnalyticsError
from analytics_shared.manifest import Manifest, sha256_file
from analytics_shared.object_store import ObjectStore

__all__ = [
    "COMPRESSIONS",
    "SnapshotFileError",
    "decompress",
    "fetch_verified",
    "probe",
    "quote_ident",
    "table_checksum",
    "verify_bytes",
    "verify_checksums",
]

# What `Manifest.compression` may say; None (or "none") is a plain DuckDB file.
COMPRESSIONS = ("zstd", "none")


class SnapshotFileError(AnalyticsError, ValueError):
    """A snapshot file is not the one its manifest describes, or cannot be read."""


def quote_ident(name: str) -> str:
    """A DuckDB (and ANSI SQL) quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def verify_bytes(path: Path, manifest: Manifest) -> None:
    """The stored object at `path` has the manifest's size and sha256."""
    size = path.stat().st_size
    if size != manifest.size:  # no need to hash a file of the wrong size
        raise SnapshotFileError(
            f"snapshot {manifest.version} failed verification (size {size} vs {manifest.size})"
        )
    digest = sha256_file(path)
    if digest != manifest.sha256:
        raise SnapshotFileError(
            f"snapshot {manifest.version} failed verification"
            f" (sha256 {digest} vs {manifest.sha256})"
        )


def decompress(src: Path, dest: Path, compression: str | None) -> Path:
    """Turn the stored object `src` into the plain DuckDB file `dest`.

    `src` is consumed (moved when uncompressed, so no second copy is written);
    `dest` appears whole or not at all.
    """
    if compression not in (None, *COMPRESSIONS):
        raise SnapshotFileError(f"unknown snapshot compression {compression!r}")
    if compression != "zstd":
        os.replace(src, dest)
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with src.open("rb") as fin, tmp.open("wb") as fout:
            try:
                zstandard.ZstdDecompressor().copy_stream(fin, fout)
            except zstandard.ZstdError as exc:
                raise SnapshotFileError(f"cannot decompress snapshot: {exc}") from None
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        src.unlink()  # it was opened above, so it exists
    return dest


def fetch_verified(store: ObjectStore, manifest: Manifest, dest: Path) -> Path:
    """Download the snapshot `manifest` names, verify it and write the plain file `dest`.

    Nothing is left at `dest` (or beside it) when any step fails.
    """
    download = dest.with_name(dest.name + ".download")
    try:
        store.get_file(manifest.snapshot_key, download)
        verify_bytes(download, manifest)
        return decompress(download, dest, manifest.compression)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        download.unlink(missing_ok=True)


def table_checksum(con: Any, table: str, schema: str = "main") -> str:
    """Order-independent checksum of a table's rows: the row count and two
    64-bit row hashes (different seeds) xor-ed over all rows. One scan; equal
    in DuckDB 1.5.5 and 2.0.1 for the same column types and values."""
    count, plain, seeded = con.execute(
        "SELECT count(*), coalesce(bit_xor(hash(t)), 0), coalesce(bit_xor(hash(t, 'fp')), 0)"
        f" FROM {quote_ident(schema)}.{quote_ident(table)} AS t"
    ).fetchone()
    return f"{count}:{plain:x}:{seeded:x}"


def verify_checksums(con: Any, manifest: Manifest) -> None:
    """A lake replica holds exactly the rows of its manifest's snapshot."""
    if manifest.lake is None:
        return
    for table, expected in manifest.lake.checksums.items():
        actual = table_checksum(con, table)
        if actual != expected:
            raise SnapshotFileError(
                f"replica {manifest.version}: table {table} has checksum {actual},"
                f" the manifest says {expected}"
            )


def probe(con: Any, manifest: Manifest) -> None:
    """An open snapshot (a DuckDB connection) answers queries and holds the
    rows the manifest promises; a mismatch means it is not the version it
    claims to be."""
    con.execute("SELECT 1").fetchall()
    counted = {name: info.row_count for name, info in manifest.tables.items()}
    # Table models are counted like tables; views must at least bind (cheap).
    counted.update(
        (name, m.row_count)
        for name, m in manifest.models.items()
        if m.kind == "table" and m.row_count is not None
    )
    for table, expected in counted.items():
        (count,) = con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()
        if count != expected:
            raise SnapshotFileError(
                f"snapshot {manifest.version}: table {table} has {count} rows,"
                f" the manifest says {expected}"
            )
    for name, model in manifest.models.items():
        if model.kind == "view":
            con.execute(f"SELECT * FROM {quote_ident(name)} LIMIT 0").fetchall()
