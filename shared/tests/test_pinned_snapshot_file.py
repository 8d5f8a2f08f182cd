"""Snapshot verification details the mutation run found unpinned: the sha256
comparison is an equality whichever way the digests order, a damaged zstd
stream is a SnapshotFileError, and probe() counts table models and binds views."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from analytics_shared.manifest import Manifest, ModelInfo, TableInfo, new_version_id, sha256_file
from analytics_shared.snapshot_file import SnapshotFileError, decompress, probe, verify_bytes


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
    ],
    ids=["consistent", "uncounted_table_model", "fewer_rows", "more_rows", "view_does_not_bind"],
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
