"""`analytics-etl versions` and `analytics-etl rollback VERSION`."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from analytics_shared.manifest import TableInfo
from analytics_shared.object_store import LocalObjectStore
from etl_service import cli
from etl_service.export import export_snapshot
from etl_service.ops.versions import RollbackError, rollback
from etl_service.publisher import Publisher


@pytest.fixture
def published(tmp_path):
    """Three published versions of a one-table database: quantity = 1, 2, 3."""
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store, grace_seconds=0)
    con = duckdb.connect(str(tmp_path / "work.duckdb"))
    con.execute("CREATE TABLE inventory (id INTEGER, quantity INTEGER)")
    manifests = []
    for n in (1, 2, 3):
        con.execute("DELETE FROM inventory")
        con.execute("INSERT INTO inventory SELECT i, ? FROM range(?) t(i)", [n, n * 10])
        snap = export_snapshot(con, tmp_path / "outgoing" / "snapshot.db")
        manifests.append(publisher.publish(snap, {"inventory": TableInfo(row_count=n * 10)}))
    con.close()
    return publisher, manifests


def test_rollback_makes_an_older_version_current(published, tmp_path):
    publisher, (v1, _v2, v3) = published
    manifest = rollback(publisher, v1.version, tmp_path)
    current = publisher.current()
    assert current == manifest
    assert current.version == v1.version and current.sha256 == v1.sha256
    assert current.previous_version == v3.version
    assert current.rolled_back_from == v3.version
    # The ETL does not publish the data the operator moved away from...
    assert publisher.is_unchanged(v3.content_fingerprint)
    # ...but new data goes out as usual.
    assert not publisher.is_unchanged("0" * 64)
    # Rolling "back" to the newest version ends the rollback.
    again = rollback(publisher, v3.version, tmp_path)
    assert again.rolled_back_from is None and publisher.current().version == v3.version
    assert list(tmp_path.glob("rollback-*")) == []


def test_rollback_refuses_unknown_and_corrupt_versions(published, tmp_path):
    publisher, (v1, v2, v3) = published
    with pytest.raises(RollbackError, match="no published version"):
        rollback(publisher, "20000101T000000000000Z", tmp_path)

    # Flip one byte of v2's stored snapshot: verified before it is announced.
    path = Path(publisher.store.root) / v2.snapshot_key  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RollbackError, match="failed verification"):
        rollback(publisher, v2.version, tmp_path)

    # Consistent sha256 but not what the manifest describes (wrong row count).
    v1_manifest = publisher.sidecar(v1.version)
    lying = v1_manifest.model_copy(update={"tables": {"inventory": TableInfo(row_count=99)}})
    publisher.store.put_bytes(f"history/analytics_{v1.version}.json", lying.to_json())
    with pytest.raises(RollbackError, match="99"):
        rollback(publisher, v1.version, tmp_path)
    assert publisher.current().version == v3.version


def test_cli_versions_and_rollback(published, tmp_path, monkeypatch, capsys):
    publisher, (v1, v2, v3) = published
    monkeypatch.setenv("STORAGE_URL", publisher.store.url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LOG_JSON", "false")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")

    assert cli.main(["versions", "--text"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"store: {publisher.store.url}"  # says which store it read
    rows = [line for line in lines[2:] if line.strip()]
    fields = [r[2:].split() for r in rows]  # after the "* " / "  " marker
    assert [f[0] for f in fields] == [v3.version, v2.version, v1.version]
    assert rows[0].startswith("*") and not rows[1].startswith("*")
    assert fields[0][3] == "zstd" and fields[0][-1] == "30"

    assert cli.main(["rollback", v2.version]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["version"] == v2.version and out["previous_version"] == v3.version
    assert cli.main(["versions"]) == 0  # piped: JSON
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed if v["current"]] == [v2.version]
    assert [v["version"] for v in listed] == [v3.version, v2.version, v1.version]

    assert cli.main(["rollback", "nope"]) == 1
    assert "no published version" in capsys.readouterr().err
