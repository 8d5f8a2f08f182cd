"""Publishing: immutable upload, conditional manifest commit, skip, retention, logs."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from analytics_shared.manifest import MANIFEST_KEY, Manifest, TableInfo
from analytics_shared.object_store import LocalObjectStore, ObjectStore
from analytics_shared.snapshot_file import fetch_verified
from etl_service.export import content_fingerprint, export_snapshot
from etl_service.publisher import (
    CONVENIENCE_KEY,
    ManifestConflict,
    Publisher,
    manifest_key_for,
)


class Working:
    """A tiny working database standing in for the ETL's warehouse."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.con = duckdb.connect(str(tmp_path / "work.duckdb"))
        self.con.execute("CREATE TABLE inventory (id INTEGER PRIMARY KEY, quantity INTEGER)")
        self.con.execute("INSERT INTO inventory SELECT i, i * 10 FROM range(1, 101) t(i)")

    def set_quantity(self, row_id: int, quantity: int) -> None:
        self.con.execute("UPDATE inventory SET quantity = ? WHERE id = ?", [quantity, row_id])

    def tables(self) -> dict[str, TableInfo]:
        row = self.con.execute("SELECT count(*) FROM inventory").fetchone()
        return {"inventory": TableInfo(row_count=int(row[0]))}

    def publish(self, publisher: Publisher) -> Manifest:
        snap = export_snapshot(self.con, self.dir / "outgoing" / "snapshot.db")
        return publisher.publish(snap, self.tables())


@pytest.fixture
def working(tmp_path) -> Working:
    w = Working(tmp_path)
    yield w
    w.con.close()


def _download_plain(store: ObjectStore, manifest: Manifest, dest_dir: Path) -> Path:
    return fetch_verified(store, manifest, dest_dir / "plain.db")


def test_publish_writes_history_then_manifest_and_convenience_copy(store, working, tmp_path):
    publisher = Publisher(store)
    manifest = working.publish(publisher)

    assert manifest.compression == "zstd"
    assert manifest.snapshot_key == f"history/analytics_{manifest.version}.db.zst"
    assert manifest.previous_version is None
    assert manifest.content_fingerprint == content_fingerprint(working.con)
    assert Manifest.from_json(store.get_bytes(MANIFEST_KEY)[0]) == manifest
    assert Manifest.from_json(store.get_bytes(manifest_key_for(manifest.version))[0]) == manifest

    plain = _download_plain(store, manifest, tmp_path)
    con = duckdb.connect(str(plain), read_only=True)
    assert con.execute("SELECT count(*), sum(quantity) FROM inventory").fetchone() == (100, 50500)
    con.close()
    # The convenience copy is the plain DuckDB file, for tools that expect one.
    store.get_file(CONVENIENCE_KEY, tmp_path / "conv.db")
    con = duckdb.connect(str(tmp_path / "conv.db"), read_only=True)
    assert con.execute("SELECT count(*) FROM inventory").fetchone() == (100,)
    con.close()

    working.set_quantity(1, 999)
    second = working.publish(publisher)
    assert second.version > manifest.version
    assert second.previous_version == manifest.version


def test_snapshot_is_compact_even_when_the_working_file_bloats(working, tmp_path):
    # Freed blocks in the middle of the working file stay there: it cannot shrink.
    working.con.execute(
        "CREATE TABLE scratch AS SELECT range AS x, random() AS y FROM range(1000000)"
    )
    working.con.execute("CHECKPOINT")
    working.con.execute("CREATE TABLE later AS SELECT range AS x FROM range(1000)")
    working.con.execute("DROP TABLE scratch")
    working.con.execute("CHECKPOINT")
    working_size = (tmp_path / "work.duckdb").stat().st_size
    snap = export_snapshot(working.con, tmp_path / "out" / "snapshot.db")
    assert snap.size * 2 < working_size
    assert not (tmp_path / "out" / "snapshot.db.wal").exists()
    con = duckdb.connect(str(snap.path), read_only=True)
    assert con.execute("SELECT count(*) FROM later").fetchone() == (1000,)
    con.close()


def test_uncompressed_publishing(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    manifest = working.publish(Publisher(store, compression="none"))
    assert manifest.compression is None
    assert manifest.snapshot_key.endswith(".db")
    plain = _download_plain(store, manifest, tmp_path)
    assert duckdb.connect(str(plain), read_only=True).execute(
        "SELECT count(*) FROM inventory"
    ).fetchone() == (100,)


def test_a_cycle_that_changed_nothing_publishes_nothing(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store)
    first = working.publish(publisher)
    objects = sorted(o.key for o in store.list())

    again = working.publish(publisher)
    assert again == first and publisher.last_publish_skipped
    assert sorted(o.key for o in store.list()) == objects

    working.set_quantity(5, 1)
    changed = working.publish(publisher)
    assert changed.version != first.version and not publisher.last_publish_skipped


def test_a_lost_manifest_race_is_a_conflict_and_changes_nothing(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store)
    first = working.publish(publisher)
    _, etag = publisher.read_current()
    # Another writer commits in between this writer's read and its write.
    working.set_quantity(2, 7)
    other = working.publish(Publisher(store))
    working.set_quantity(2, 8)
    snap = export_snapshot(working.con, tmp_path / "outgoing" / "late.db")
    late = first.model_copy(update={"version": "late", "content_fingerprint": snap.fingerprint})
    with pytest.raises(ManifestConflict):
        publisher.commit(late, etag)
    assert publisher.current() == other
    # The very first version is create-only: a second "first" writer loses too.
    fresh = Publisher(LocalObjectStore(tmp_path / "fresh"))
    fresh.commit(first, None)
    with pytest.raises(ManifestConflict):
        fresh.commit(other, None)


def test_a_commit_whose_retry_already_landed_is_not_a_conflict(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store)
    manifest = working.publish(publisher)
    stored, etag = store.get_bytes(MANIFEST_KEY)
    # A retried PUT whose first attempt landed gets 412: the manifest already says
    # exactly this, so the commit succeeds and the commit point is left as it was.
    publisher.commit(manifest, "stale-etag")
    assert store.get_bytes(MANIFEST_KEY) == (stored, etag)
    assert publisher.current() == manifest
    # The same stale etag with any other version or content is another writer's win.
    for other in (
        manifest.model_copy(update={"version": "20990101T000000000000Z"}),
        manifest.model_copy(update={"sha256": "0" * 64}),
    ):
        with pytest.raises(ManifestConflict, match="another writer is active"):
            publisher.commit(other, "stale-etag")
        assert store.get_bytes(MANIFEST_KEY) == (stored, etag)


def test_retention_keeps_last_n_current_and_young(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store, retention=3, grace_seconds=0)
    published = []
    for i in range(6):
        working.set_quantity(1, 1000 + i)
        published.append(working.publish(publisher))
    left = [v.version for v in publisher.versions()]
    assert left == [m.version for m in reversed(published[-3:])]

    # The current version survives even when it is the oldest (after a rollback).
    oldest = published[3]
    publisher.commit(oldest, publisher.read_current()[1])
    for i in range(3):
        working.set_quantity(2, 2000 + i)
        snap = export_snapshot(working.con, tmp_path / "outgoing" / "s.db")
        store.put_file(f"history/analytics_2099010{i}T000000000000Z.db.zst", snap.path)
    publisher.apply_retention()
    left = {v.version for v in publisher.versions()}
    assert oldest.version in left
    assert publisher.current() == oldest


def test_retention_grace_protects_young_snapshots(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store, retention=1, grace_seconds=3600)
    for i in range(3):
        working.set_quantity(1, i)
        working.publish(publisher)
    assert len(publisher.versions()) == 3  # all younger than the grace period
    publisher.grace_seconds = 0
    publisher.apply_retention()
    assert len(publisher.versions()) == 1


def test_retention_never_guesses_without_a_readable_manifest(tmp_path, working):
    store = LocalObjectStore(tmp_path / "store")
    publisher = Publisher(store, retention=1, grace_seconds=0)
    for i in range(3):
        working.set_quantity(1, i)
        working.publish(publisher)
    store.put_bytes(MANIFEST_KEY, b"garbage")
    assert publisher.apply_retention() == []


def test_manifests_from_a_newer_writer_with_extra_fields_still_parse(tmp_path, working):
    """Compatibility rule: optional additions within a format_version are ignored."""
    store = LocalObjectStore(tmp_path / "store")
    manifest = working.publish(Publisher(store))
    doc = json.loads(manifest.to_json())
    doc["added_by_a_newer_writer"] = {"anything": 1}
    assert Manifest.from_json(json.dumps(doc)) == manifest
