"""The one definition of a verified snapshot file, used by the ETL, the API and the tests."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
import zstandard

from analytics_shared.manifest import Manifest, TableInfo, new_version_id, sha256_file
from analytics_shared.object_store import LocalObjectStore
from analytics_shared.snapshot_file import (
    SnapshotFileError,
    fetch_verified,
    probe,
    quote_ident,
)


def _publish(
    tmp_path: Path, compression: str | None, rows: int = 3
) -> tuple[LocalObjectStore, Manifest]:
    db = tmp_path / "made.db"
    con = duckdb.connect(str(db))
    con.execute(f'CREATE TABLE "odd ""name" AS SELECT range AS id FROM range({rows})')
    con.close()
    raw = db.read_bytes()
    if compression == "zstd":
        raw = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    store = LocalObjectStore(tmp_path / "store")
    key = "history/analytics_x.db" + (".zst" if compression else "")
    store.put_bytes(key, raw)
    obj = tmp_path / "obj"
    obj.write_bytes(raw)
    manifest = Manifest(
        version=new_version_id(),
        created_at=datetime.now(UTC),
        snapshot_key=key,
        sha256=sha256_file(obj),
        size=len(raw),
        compression=compression,
        tables={'odd "name': TableInfo(row_count=rows)},
    )
    return store, manifest


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_fetch_verified_then_probe(tmp_path, compression):
    store, manifest = _publish(tmp_path, compression)
    plain = fetch_verified(store, manifest, tmp_path / "out" / "v.db")
    con = duckdb.connect(str(plain), read_only=True)
    try:
        probe(con, manifest)
    finally:
        con.close()
    assert sorted(p.name for p in plain.parent.iterdir()) == ["v.db"]


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_damaged_object_is_refused_by_its_sha256_and_leaves_nothing(tmp_path, compression):
    store, manifest = _publish(tmp_path, compression)
    obj = store.root / manifest.snapshot_key
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    obj.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SnapshotFileError, match=r"failed verification \(sha256"):
        fetch_verified(store, manifest, out / "v.db")
    assert list(out.iterdir()) == []


def test_a_truncated_object_is_refused_by_its_size(tmp_path):
    store, manifest = _publish(tmp_path, None)
    obj = store.root / manifest.snapshot_key
    obj.write_bytes(obj.read_bytes()[:-10])
    with pytest.raises(SnapshotFileError, match=r"failed verification \(size"):
        fetch_verified(store, manifest, tmp_path / "v.db")


def test_probe_refuses_a_file_whose_row_counts_differ(tmp_path):
    store, manifest = _publish(tmp_path, None)
    lying = manifest.model_copy(update={"tables": {'odd "name': TableInfo(row_count=4)}})
    plain = fetch_verified(store, manifest, tmp_path / "v.db")
    con = duckdb.connect(str(plain), read_only=True)
    try:
        with pytest.raises(
            SnapshotFileError, match='table odd "name has 3 rows, the manifest says 4'
        ):
            probe(con, lying)
    finally:
        con.close()


def test_unknown_compression_is_refused(tmp_path):
    store, manifest = _publish(tmp_path, None)
    odd = manifest.model_copy(update={"compression": "lz4"})
    with pytest.raises(SnapshotFileError, match="unknown snapshot compression 'lz4'"):
        fetch_verified(store, odd, tmp_path / "v.db")


def test_quote_ident_doubles_quotes():
    con = duckdb.connect()
    name = 'a"b; DROP'
    con.execute(f"CREATE TABLE {quote_ident(name)} (x INT)")
    assert con.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [('a"b; DROP',)]
