"""Snapshot verification details the mutation run found unpinned: the sha256
comparison is an equality whichever way the digests order, a damaged zstd
stream is a SnapshotFileError, probe() counts table models and binds views,
and a lake replica is served only with the rows its manifest's checksums name."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from analytics_shared.manifest import (
    LakeInfo,
    Manifest,
    ModelInfo,
    TableInfo,
    new_version_id,
    sha256_file,
)
from analytics_shared.snapshot_file import (
    SnapshotFileError,
    decompress,
    probe,
    table_checksum,
    verify_bytes,
    verify_checksums,
)


def _manifest(path: Path, **fields) -> Manifest:
    values = {
        "version": new_version_id(),
        "created_at": datetime.now(UTC),
        "snapshot_key": "history/analytics_x.db",
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "tables": {},
        **fields,
    }
    return Manifest(**values)


@pytest.mark.parametrize("digest", ["0" * 64, "f" * 64])
def test_any_other_sha256_is_refused_whichever_way_it_orders(tmp_path, digest):
    obj = tmp_path / "obj"
    obj.write_bytes(b"snapshot bytes")
    verify_bytes(obj, _manifest(obj))  # the right digest passes
    with pytest.raises(SnapshotFileError, match="sha256"):
        verify_bytes(obj, _manifest(obj, sha256=digest))


@pytest.mark.parametrize("size_delta", [-1, 1])
def test_any_other_size_is_refused_by_its_size(tmp_path, size_delta):
    obj = tmp_path / "obj"
    obj.write_bytes(b"snapshot bytes")
    manifest = _manifest(obj, size=obj.stat().st_size + size_delta)
    with pytest.raises(SnapshotFileError, match="size"):
        verify_bytes(obj, manifest)


def test_a_damaged_zstd_stream_is_a_snapshot_file_error_and_leaves_nothing(tmp_path):
    src, dest = tmp_path / "obj.zst", tmp_path / "plain.db"
    src.write_bytes(b"\x28\xb5\x2f\xfd" + b"not really zstd" * 10)
    with pytest.raises(SnapshotFileError, match="cannot decompress"):
        decompress(src, dest, "zstd")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _models_db(tmp_path: Path) -> Path:
    db = tmp_path / "models.db"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE inventory AS SELECT range AS id FROM range(300)")
    con.execute("CREATE TABLE stock_rollup AS SELECT range AS id FROM range(2)")
    con.execute("CREATE VIEW low_stock AS SELECT id FROM inventory WHERE id < 2")
    con.close()
    return db


def _model(kind: str, row_count: int | None) -> ModelInfo:
    return ModelInfo(kind=kind, row_count=row_count, sql_sha256="a" * 64)


@pytest.mark.parametrize(
    ("models", "error"),
    [
        ({"stock_rollup": _model("table", 2), "low_stock": _model("view", None)}, None),
        ({"stock_rollup": _model("table", None)}, None),  # no count recorded: not counted
        ({"stock_rollup": _model("table", 3)}, "stock_rollup has 2 rows"),
        ({"stock_rollup": _model("table", 1)}, "stock_rollup has 2 rows"),  # more rows too
        ({"low_stock": _model("view", None), "gone_view": _model("view", None)}, "gone_view"),
        # A view is bound, never counted (counting would run its whole query at each swap).
        ({"low_stock": _model("view", 99)}, None),
    ],
    ids=[
        "consistent",
        "uncounted_table_model",
        "fewer_rows",
        "more_rows",
        "view_does_not_bind",
        "view_with_a_row_count",
    ],
)
def test_probe_counts_table_models_and_binds_views(tmp_path, models, error):
    # 300 rows: counts compare by value (ints above 256 are distinct objects).
    db = _models_db(tmp_path)
    manifest = _manifest(db, tables={"inventory": TableInfo(row_count=300)}, models=models)
    con = duckdb.connect(str(db), read_only=True)
    try:
        if error is None:
            probe(con, manifest)
        else:
            with pytest.raises((SnapshotFileError, duckdb.Error), match=error):
                probe(con, manifest)
    finally:
        con.close()


def _rows(con: duckdb.DuckDBPyConnection, rows: str) -> str:
    con.execute("CREATE OR REPLACE TABLE t (id INTEGER, name VARCHAR)")
    con.execute(f"INSERT INTO t VALUES {rows}")
    return table_checksum(con, "t")


def test_a_table_checksum_is_the_row_count_and_two_hashes_in_any_row_order():
    con = duckdb.connect()
    try:
        checksum = _rows(con, "(1, 'a'), (2, 'b'), (3, NULL)")
        count, plain, seeded = checksum.split(":")
        assert count == "3" and plain != seeded  # two different hashes
        assert _rows(con, "(3, NULL), (1, 'a'), (2, 'b')") == checksum
        assert _rows(con, "(1, 'a'), (2, 'c'), (3, NULL)") != checksum
        assert _rows(con, "(1, 'a') LIMIT 0") == "0:0:0"
    finally:
        con.close()


def _lake_manifest(path: Path, checksums: dict[str, str]) -> Manifest:
    lake = LakeInfo(snapshot_id=1, metadata_schema="lake_meta", checksums=checksums)
    return _manifest(path, lake=lake)


@pytest.mark.parametrize("wrong", ["0:0:0", "9:0:0"])  # sorts before and after the right one
def test_a_replica_with_other_rows_than_its_manifest_says_is_refused(tmp_path, wrong):
    (path := tmp_path / "obj").write_bytes(b"x")
    con = duckdb.connect()
    try:
        right = _rows(con, "(1, 'a'), (2, 'b')")
        verify_checksums(con, _lake_manifest(path, {"t": right}))
        with pytest.raises(SnapshotFileError, match=f"table t has checksum {right}"):
            verify_checksums(con, _lake_manifest(path, {"t": wrong}))
    finally:
        con.close()
    # A file snapshot has no checksums to verify: nothing is queried.
    verify_checksums(None, _manifest(path))
