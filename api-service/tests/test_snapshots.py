"""SnapshotManager: verified loading, hot swap, shared cache, refusals, outages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pytest
import zstandard
from fastapi import FastAPI

from analytics_shared.manifest import MANIFEST_KEY, LakeInfo, Manifest, TableInfo, sha256_file
from analytics_shared.object_store import LocalObjectStore, StoreUnavailable
from api_service.auth.tokens import JwksCache, TokenValidator
from api_service.data.snapshots import SnapshotManager, open_sandboxed
from api_service.deps import may_see_status_details
from api_service.errors import NoSnapshot
from api_service.routes import health
from testsupport.clock import FakeClock


class FlakyStore(LocalObjectStore):
    """A local store that counts downloads and can be switched off."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = False
        self.downloads = 0

    def get_bytes(self, key, if_none_match=None):
        if self.down:
            raise StoreUnavailable("store is down (test)")
        return super().get_bytes(key, if_none_match)

    def get_file(self, key, dest):
        if self.down:
            raise StoreUnavailable("store is down (test)")
        self.downloads += 1
        return super().get_file(key, dest)


class Source:
    """Publishes tiny versions straight into a store (the ETL's protocol, minus the ETL)."""

    def __init__(self, store: LocalObjectStore, workdir: Path) -> None:
        self.store = store
        self.workdir = workdir
        self.n = 0

    def publish(self, quantity: int, rows: int = 5, *, compress: bool = True) -> Manifest:
        self.n += 1
        version = f"2026010{self.n}T000000000000Z" if self.n < 10 else f"202601{self.n}T0Z"
        plain = self.workdir / f"{version}.db"
        con = duckdb.connect(str(plain))
        con.execute(
            "CREATE TABLE inventory AS SELECT range AS id, ? AS quantity FROM range(?)",
            [quantity, rows],
        )
        con.close()
        stored = plain
        if compress:
            stored = plain.with_suffix(".db.zst")
            stored.write_bytes(
                zstandard.ZstdCompressor(write_checksum=True).compress(plain.read_bytes())
            )
        key = f"history/analytics_{version}.db" + (".zst" if compress else "")
        self.store.put_file(key, stored)
        manifest = Manifest(
            version=version,
            created_at=datetime.now(UTC),
            snapshot_key=key,
            sha256=sha256_file(stored),
            size=stored.stat().st_size,
            compression="zstd" if compress else None,
            tables={"inventory": TableInfo(row_count=rows)},
        )
        self.point_to(manifest)
        return manifest

    def point_to(self, manifest: Manifest) -> None:
        self.store.put_bytes(MANIFEST_KEY, manifest.to_json())

    def object_path(self, manifest: Manifest) -> Path:
        return self.store.root / manifest.snapshot_key


@pytest.fixture
def store(tmp_path) -> FlakyStore:
    return FlakyStore(tmp_path / "store")


@pytest.fixture
def source(store, tmp_path) -> Source:
    work = tmp_path / "work"
    work.mkdir()
    return Source(store, work)


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def managers(store, cache):
    made: list[SnapshotManager] = []

    def make() -> SnapshotManager:
        m = SnapshotManager(store, cache, memory_limit="256MB", threads=1)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def quantity(manager: SnapshotManager) -> tuple[str, int]:
    with manager.lease() as snap:
        row = snap.con.execute("SELECT max(quantity) FROM inventory").fetchone()
        return snap.version, int(row[0])


def cached_versions(cache: Path) -> set[str]:
    return {p.name[: -len(".db")] for p in cache.glob("*.db")}


def test_not_ready_until_a_verified_snapshot_is_open(managers, source):
    manager = managers()
    assert manager.refresh() is False
    status = manager.status()
    assert status["ready"] is False and status["last_refresh_failed"] is True
    assert "nothing published" in status["last_refresh_error"]
    with pytest.raises(NoSnapshot), manager.lease():
        pass
    v1 = source.publish(quantity=1)
    assert manager.refresh() is True
    assert quantity(manager) == (v1.version, 1)
    status = manager.status()
    assert status["ready"] and status["data_version"] == v1.version and status["up_to_date"]
    assert status["last_refresh_failed"] is False and status["data_age_seconds"] >= 0
    assert manager.refresh() is False  # unchanged manifest: If-None-Match, no download


def test_swap_lets_running_queries_finish_then_deletes_the_old_file(managers, source, cache):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    with manager.lease() as old:
        v2 = source.publish(quantity=2)
        assert manager.refresh() is True
        assert quantity(manager) == (v2.version, 2)
        # The leased old version still answers, and its file is still there.
        assert old.con.execute("SELECT max(quantity) FROM inventory").fetchone() == (1,)
        assert v1.version in cached_versions(cache)
    assert old.closed
    assert cached_versions(cache) == {v2.version}
    assert not list(cache.glob(f"{v1.version}.*"))


def test_workers_share_one_download_and_old_files_outlive_their_last_reader(
    managers, source, store, cache
):
    worker_a, worker_b = managers(), managers()
    v1 = source.publish(quantity=1)
    assert worker_a.refresh() and worker_b.refresh()
    assert store.downloads == 1  # the second worker opened the verified file

    v2 = source.publish(quantity=2)
    assert worker_a.refresh()
    assert quantity(worker_a) == (v2.version, 2)
    # Worker B still serves v1 from the same file: it must not be deleted.
    assert quantity(worker_b) == (v1.version, 1)
    assert v1.version in cached_versions(cache)
    assert worker_b.refresh()
    assert store.downloads == 2
    assert cached_versions(cache) == {v2.version}


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_object_is_refused_and_the_old_version_keeps_serving(
    managers, source, store, damage
):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    v2 = source.publish(quantity=2)
    path = source.object_path(v2)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: len(data) // 2]))

    assert manager.refresh() is False
    assert quantity(manager) == (v1.version, 1)
    status = manager.status()
    assert status["last_refresh_failed"] and "failed verification" in status["last_refresh_error"]
    assert status["verification_failures_total"] == 1 and status["refresh_failures_total"] == 1
    assert status["latest_version_seen"] == v2.version and not status["up_to_date"]
    # The refused version is not downloaded again on every poll (backoff).
    downloads = store.downloads
    assert manager.refresh() is False
    assert store.downloads == downloads
    assert not list(manager.cache_dir.glob(f"{v2.version}.*"))

    v3 = source.publish(quantity=3)  # the next good version goes in
    assert manager.refresh() is True
    assert quantity(manager) == (v3.version, 3)
    assert manager.status()["last_refresh_failed"] is False


def test_a_refused_version_is_retried_after_2_s_doubling_to_5_minutes(source, store, cache):
    """docs/architecture.md: "retried with backoff (2 s doubling to 5 min), not on
    every poll"; the retry of a version that stays broken, on a controllable clock."""
    clock = FakeClock()
    manager = SnapshotManager(store, cache, memory_limit="256MB", threads=1, clock=clock)
    try:
        v1 = source.publish(quantity=1)
        assert manager.refresh() is True
        v2 = source.publish(quantity=2)
        path = source.object_path(v2)
        path.write_bytes(path.read_bytes()[:-7])  # stays damaged

        def attempts() -> int:
            return manager.status()["verification_failures_total"]

        assert manager.refresh() is False and attempts() == 1
        for expected in (2, 4, 8, 16, 32, 64, 128, 256, 300, 300):
            downloads = store.downloads
            clock.advance(expected - 0.05)  # every poll before the retry is due: no attempt
            assert manager.refresh() is False and store.downloads == downloads
            assert f"next attempt in {0.05:.0f} s" in manager.status()["last_refresh_error"]
            clock.advance(0.05)
            tried = attempts()
            assert manager.refresh() is False
            assert attempts() == tried + 1 and store.downloads == downloads + 1
        assert quantity(manager) == (v1.version, 1)  # served throughout
        # a new version is not held back by the old one's back-off
        v3 = source.publish(quantity=3)
        assert manager.refresh() is True and quantity(manager) == (v3.version, 3)
    finally:
        manager.close()


def test_an_unreadable_or_inconsistent_file_is_never_swapped_in(managers, source, store):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    # Correct sha256 and size, but not a DuckDB database.
    junk = source.workdir / "junk.db"
    junk.write_bytes(os.urandom(300_000))
    store.put_file("history/junk.db", junk)
    bad = v1.model_copy(
        update={
            "version": "junk",
            "snapshot_key": "history/junk.db",
            "sha256": sha256_file(junk),
            "size": junk.stat().st_size,
            "compression": None,
        }
    )
    source.point_to(bad)
    assert manager.refresh() is False
    assert quantity(manager) == (v1.version, 1)
    # A real database whose contents do not match the manifest's row counts.
    v2 = source.publish(quantity=2, rows=5)
    lying = v2.model_copy(
        update={"version": "lying", "tables": {"inventory": TableInfo(row_count=6)}}
    )
    source.point_to(lying)
    assert manager.refresh() is False
    assert quantity(manager) == (v1.version, 1)
    assert "6" in manager.status()["last_refresh_error"]
    assert manager.status()["verification_failures_total"] == 2


def test_rollback_is_a_manifest_naming_an_older_version(managers, source):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    v2 = source.publish(quantity=2, compress=False)
    manager.refresh()
    assert quantity(manager) == (v2.version, 2)
    source.point_to(v1)
    assert manager.refresh() is True
    assert quantity(manager) == (v1.version, 1)


def test_store_outage_keeps_serving_and_is_reported(managers, source, store):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    store.down = True
    source.publish(quantity=2)
    assert manager.refresh() is False
    assert quantity(manager) == (v1.version, 1)
    status = manager.status()
    assert status["ready"] and status["last_refresh_failed"]
    assert "down" in status["last_refresh_error"] and status["refresh_failures_total"] == 1
    store.down = False
    assert manager.refresh() is True
    assert quantity(manager)[1] == 2


def test_a_worker_starting_while_the_store_is_down_serves_the_hosts_verified_copy(
    managers, source, store
):
    first = managers()
    v1 = source.publish(quantity=1)
    first.refresh()
    store.down = True
    second = managers()  # e.g. a Gunicorn worker restarted during the outage
    assert second.refresh() is False
    assert quantity(second) == (v1.version, 1)
    assert second.status()["serving_cached"] is True
    store.down = False
    v2 = source.publish(quantity=2)
    assert second.refresh() is True
    assert quantity(second) == (v2.version, 2) and not second.status()["serving_cached"]


def test_a_worker_starting_while_the_current_version_is_refused_serves_the_hosts_copy(
    managers, source
):
    first = managers()
    v1 = source.publish(quantity=1)
    first.refresh()
    v2 = source.publish(quantity=2)
    path = source.object_path(v2)
    path.write_bytes(path.read_bytes()[:-7])  # damaged in the store
    assert first.refresh() is False and quantity(first) == (v1.version, 1)
    second = managers()  # e.g. a Gunicorn worker (re)started now
    assert second.refresh() is False
    # It answers from the version its sibling serves, flagged, instead of 503.
    assert quantity(second) == (v1.version, 1)
    status = second.status()
    assert status["ready"] and status["serving_cached"] and status["last_refresh_failed"]
    assert "failed verification" in status["last_refresh_error"]
    v3 = source.publish(quantity=3)
    assert second.refresh() is True
    assert quantity(second) == (v3.version, 3) and not second.status()["serving_cached"]


def test_health_reports_readiness_freshness_and_failures(managers, source, store, issuer):
    manager = managers()
    app = FastAPI()
    app.state.snapshots = manager
    # The identity provider is up: its keys are fetched by the first /health.
    app.state.validator = TokenValidator(
        JwksCache(issuer.jwks_url), issuer=issuer.issuer, audience="a", algorithms=["RS256"]
    )
    app.include_router(health.router)
    # The details (counters, errors) are for callers with read:status.
    app.dependency_overrides[may_see_status_details] = lambda: True

    class client:
        @staticmethod
        def get(path: str) -> httpx.Response:
            async def go() -> httpx.Response:
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    return await c.get(path)

            return asyncio.run(go())

    manager.refresh()
    r = client.get("/health")
    assert r.status_code == 503 and r.json()["status"] == "starting"
    assert r.json()["data_version"] is None

    v1 = source.publish(quantity=1)
    manager.refresh()
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["data_version"] == v1.version
    assert body["data_age_seconds"] >= 0 and body["last_refresh_failed"] is False
    assert body["identity_provider"]["status"] == "ok"

    store.down = True
    manager._manifest_etag = None  # force a real request
    manager.refresh()
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded" and body["last_refresh_failed"] is True
    assert body["refresh_failures_total"] >= 1 and body["data_version"] == v1.version


def test_rollback_to_a_version_whose_queries_still_run(managers, source, cache):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    with manager.lease() as old_v1:
        source.publish(quantity=2)
        manager.refresh()
        source.point_to(v1)
        assert manager.refresh() is True  # the same file opened a second time
        assert quantity(manager) == (v1.version, 1)
        assert old_v1.con.execute("SELECT count(*) FROM inventory").fetchone() == (5,)
    assert old_v1.closed
    assert quantity(manager) == (v1.version, 1)  # the new handle survives the old one's close
    assert cached_versions(cache) == {v1.version}


# -- pinned details (mutation testing: make mutation MODULES=snapshots) --------


def _settings(con: duckdb.DuckDBPyConnection, *names: str) -> dict[str, str]:
    marks = ", ".join("?" for _ in names)
    rows = con.execute(
        f"SELECT name, value FROM duckdb_settings() WHERE name IN ({marks})", list(names)
    ).fetchall()
    return dict(rows)


def _as_duckdb_shows(**config: str) -> dict[str, str]:
    """How DuckDB itself shows these settings (its units), for comparison."""
    con = duckdb.connect(config=config)
    try:
        return _settings(con, *config)
    finally:
        con.close()


def test_the_sandbox_reaches_no_file_setting_extension_or_python_object(tmp_path):
    db = tmp_path / "s.db"
    with duckdb.connect(str(db)) as w:
        w.execute("CREATE TABLE t AS SELECT 1 AS x")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    con = open_sandboxed(db, memory_limit="300MB", threads=1)
    try:
        names = (
            "enable_external_access",
            "autoload_known_extensions",
            "autoinstall_known_extensions",
            "python_enable_replacements",
            "lock_configuration",
            "threads",
            "allocator_background_threads",
        )
        assert _settings(con, *names) == {
            "enable_external_access": "false",
            "autoload_known_extensions": "false",
            "autoinstall_known_extensions": "false",
            "python_enable_replacements": "false",
            "lock_configuration": "true",
            "threads": "1",
            "allocator_background_threads": "true",
        }
        assert _settings(con, "memory_limit", "allocator_flush_threshold") == _as_duckdb_shows(
            memory_limit="300MB", allocator_flush_threshold="8MB"
        )
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
        frame = pa.table({"x": [1]})  # noqa: F841  (what a replacement scan would find)
        for sql in (
            "SELECT * FROM frame",
            f"SELECT * FROM read_csv('{tmp_path / 'secret.csv'}')",
            "SET threads = 4",
            "SET enable_external_access = true",
            "LOAD httpfs",
            "CREATE TABLE u (x INT)",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    finally:
        con.close()


def test_the_sandbox_spills_only_where_and_as_much_as_allowed(tmp_path):
    db = tmp_path / "s.db"
    duckdb.connect(str(db)).close()
    spill = tmp_path / "spill" / "v1" / "123"
    con = open_sandboxed(
        db, memory_limit="300MB", threads=1, temp_directory=spill, max_temp_directory_size="1GB"
    )
    try:
        assert spill.is_dir()
        shown = _settings(
            con, "temp_directory", "max_temp_directory_size", "enable_external_access"
        )
        assert shown == {
            "temp_directory": str(spill),
            **_as_duckdb_shows(max_temp_directory_size="1GB"),
            "enable_external_access": "false",
        }
        with pytest.raises(duckdb.Error):
            con.execute("SET temp_directory = '/tmp'")
        # The same file opened again in this process shares the locked instance.
        again = open_sandboxed(
            db, memory_limit="300MB", threads=1, temp_directory=spill, max_temp_directory_size="1GB"
        )
        assert _settings(again, "lock_configuration") == {"lock_configuration": "true"}
        again.close()
    finally:
        con.close()
    unbounded = open_sandboxed(db, memory_limit="300MB", threads=1, temp_directory=spill)
    try:
        default = duckdb.connect(config={"temp_directory": str(spill)})
        assert _settings(unbounded, "max_temp_directory_size") == _settings(
            default, "max_temp_directory_size"
        )
        default.close()
    finally:
        unbounded.close()


def test_status_reports_each_field_on_a_controllable_clock(source, store, cache):
    clock = FakeClock(start=1.0)  # small, as monotonic time is on a young host
    manager = SnapshotManager(store, cache, memory_limit="256MB", threads=1, clock=clock)
    try:
        assert manager.next_poll_delay(30) == 1.0  # quickly until something is in service
        assert manager.next_poll_delay(0.5) == 0.5
        empty = manager.status()
        assert empty["seconds_since_refresh"] is None and empty["swaps_total"] == 0
        assert empty["serving_cached"] is False and empty["up_to_date"] is False
        assert empty["data_created_at"] is None and empty["data_age_seconds"] is None
        v1 = source.publish(quantity=1)
        assert manager.refresh()
        clock.advance(7.25)
        status = manager.status()
        assert status["seconds_since_refresh"] == 7.25
        assert status["data_created_at"] == v1.created_at.isoformat()
        assert status["worker_pid"] == os.getpid() and status["swaps_total"] == 1
        assert manager.current is not None and manager.current.version == v1.version
        assert status["up_to_date"] is True and status["serving_cached"] is False
        assert "lake_replica" not in status
        assert manager.next_poll_delay(30) == 30
        source.publish(quantity=2)
        assert manager.refresh() and manager.status()["swaps_total"] == 2
        (cache / "lake-status.json").write_text('{"version": "x", "ok": true}')
        # a replica that names no published version is not behind
        assert manager.status()["lake_replica"] == {
            "version": "x",
            "ok": True,
            "lag_snapshots": 0,
            "lag_seconds": 0.0,
        }
        (cache / "lake-status.json").write_text("{not json")
        assert "lake_replica" not in manager.status()
    finally:
        manager.close()


def test_an_unexpected_error_is_counted_and_keeps_serving(managers, source, store, monkeypatch):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    source.publish(quantity=2)

    def broken(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "get_bytes", broken)
    assert manager.refresh() is False
    status = manager.status()
    assert status["last_refresh_error"] == "RuntimeError: a bug"
    assert status["refresh_failures_total"] == 1 and status["verification_failures_total"] == 0
    assert quantity(manager) == (v1.version, 1) and not status["serving_cached"]


def test_a_lake_version_waits_for_the_hosts_replicator(managers, source, cache):
    manager = managers()
    v1 = source.publish(quantity=1, compress=False)
    lake = v1.model_copy(
        update={"lake": LakeInfo(snapshot_id=1, metadata_schema="m"), "version": "lake1"}
    )
    source.point_to(lake)
    assert manager.refresh() is False
    status = manager.status()
    assert "waiting for this host's lake replicator" in status["last_refresh_error"]
    assert status["refresh_failures_total"] == 0 and not status["ready"]
    manager.cache.install(lake, source.object_path(v1))  # what the replicator does
    assert manager.refresh() is True
    assert quantity(manager) == ("lake1", 1)


def test_a_closed_manager_serves_nothing_and_frees_its_files(managers, source, cache):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    spill = manager.cache.spill_directory(v1.version)
    with manager.lease() as snap:
        snap.con.execute("SELECT 1").fetchall()
    assert not snap.closed and spill.is_dir()
    manager.close()
    assert snap.closed and not spill.exists()
    with pytest.raises(NoSnapshot), manager.lease():
        pass
    assert not manager.ready


def test_spill_directories_of_dead_workers_are_removed_at_start(store, cache, source):
    dead = cache / "v.db.tmp" / "999999999"
    dead.mkdir(parents=True)
    alive = cache / "v.db.tmp" / str(os.getpid())
    alive.mkdir()
    SnapshotManager(store, cache, memory_limit="256MB", threads=1).close()
    assert not dead.exists() and alive.exists()


def test_a_refused_version_is_retried_exactly_when_due(source, store, cache):
    clock = FakeClock()
    manager = SnapshotManager(store, cache, memory_limit="256MB", threads=1, clock=clock)
    try:
        source.publish(quantity=1)
        manager.refresh()
        v2 = source.publish(quantity=2)
        source.object_path(v2).write_bytes(b"damaged")
        manager.refresh()
        clock.advance(2.0)  # exactly the first delay
        manager.refresh()
        assert manager.status()["verification_failures_total"] == 2
        clock.advance(7.1254)  # since the last successful refresh, in ms
        assert manager.status()["seconds_since_refresh"] == 9.125
    finally:
        manager.close()


def test_only_unexpected_errors_are_logged_with_a_traceback(managers, source, store, monkeypatch):
    from structlog.testing import capture_logs

    manager = managers()
    source.publish(quantity=1)
    manager.refresh()
    source.publish(quantity=2)
    store.down = True
    with capture_logs() as logs:
        manager.refresh()
    [known] = [e for e in logs if e["event"] == "snapshot_refresh_failed"]
    assert known["log_level"] == "warning" and "exc_info" not in known
    store.down = False

    def broken(*_a, **_k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "get_bytes", broken)
    with capture_logs() as logs:
        manager.refresh()
    [bug] = [e for e in logs if e["event"] == "snapshot_refresh_failed"]
    assert bug["log_level"] == "error" and bug["exc_info"] is True


def test_an_outage_while_serving_does_not_fall_back_to_a_cached_copy(managers, source, store):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    store.down = True
    manager._manifest_etag = None
    assert manager.refresh() is False
    status = manager.status()
    assert not status["serving_cached"] and status["swaps_total"] == 1
    assert status["data_version"] == v1.version


def _open_files_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(folder)):
                found.append(target)
    return found


def test_a_refused_file_leaves_the_cache_and_no_handle_open(managers, source, store, cache):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    v2 = source.publish(quantity=2, rows=5, compress=False)
    lying = v2.model_copy(
        update={"version": "lying", "tables": {"inventory": TableInfo(row_count=6)}}
    )
    source.point_to(lying)
    assert manager.refresh() is False
    assert not list(cache.glob("lying.*"))
    assert not [f for f in _open_files_under(cache) if "lying" in f]
    assert quantity(manager) == (v1.version, 1)


def test_a_spill_directory_already_removed_is_no_error_at_close(managers, source):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    spill = manager.cache.spill_directory(v1.version)
    shutil.rmtree(spill.parent)  # e.g. a sibling's clean-up got there first
    manager.close()
    assert not manager.ready


def test_a_worker_starting_in_an_outage_skips_unusable_cached_copies(
    managers, source, store, cache
):
    first = managers()
    v1 = source.publish(quantity=1)
    first.refresh()
    first.close()
    hour_ago = time.time() - 3600  # the broken markers below are newer: tried first
    os.utime(cache / f"{v1.version}.ok", (hour_ago, hour_ago))
    junk = v1.model_copy(update={"version": "junk"})  # not a database
    (cache / "junk.db").write_bytes(os.urandom(4096))
    (cache / "junk.ok").write_bytes(junk.to_json())
    lying = v1.model_copy(  # a database whose row counts differ
        update={"version": "lying", "tables": {"inventory": TableInfo(row_count=6)}}
    )
    shutil.copyfile(cache / f"{v1.version}.db", cache / "lying.db")
    (cache / "lying.ok").write_bytes(lying.to_json())
    (cache / "garbled.ok").write_text("{not a manifest")
    (cache / "gone.ok").write_bytes(v1.model_copy(update={"version": "gone"}).to_json())  # no .db
    (cache / "folder.ok").mkdir()
    store.down = True
    second = managers()
    assert second.refresh() is False
    assert quantity(second) == (v1.version, 1) and second.status()["serving_cached"]


def test_a_cache_locked_too_long_refuses_the_version_for_a_while(source, store, cache):
    from filelock import FileLock

    clock = FakeClock()
    manager = SnapshotManager(
        store, cache, memory_limit="256MB", threads=1, lock_timeout=0.05, clock=clock
    )
    try:
        source.publish(quantity=1)
        with FileLock(str(cache / ".cache.lock")):  # another worker, stuck mid-download
            assert manager.refresh() is False
        status = manager.status()
        assert "locked by another worker" in status["last_refresh_error"]
        assert status["verification_failures_total"] == 1
        assert manager.refresh() is False  # not before the back-off
        clock.advance(2.0)
        assert manager.refresh() is True
    finally:
        manager.close()


def test_a_rewritten_manifest_naming_the_version_in_service_is_no_swap(managers, source, store):
    manager = managers()
    v1 = source.publish(quantity=1)
    assert manager.refresh() is True
    source.point_to(v1.model_copy(update={"created_at": v1.created_at.replace(year=2025)}))
    assert manager.refresh() is False  # a new manifest object, the same version
    status = manager.status()
    assert status["swaps_total"] == 1 and status["up_to_date"] is True


def test_the_retry_message_counts_down_from_the_refusal(source, store, cache):
    clock = FakeClock(start=1.0)  # a host up for one second: monotonic time is small
    manager = SnapshotManager(store, cache, memory_limit="256MB", threads=1, clock=clock)
    try:
        v1 = source.publish(quantity=1)
        source.object_path(v1).write_bytes(b"damaged")
        manager.refresh()
        manager.refresh()
        error = manager.status()["last_refresh_error"]
        assert error.startswith("SnapshotFileError: ") and "(refused; next attempt in 2 s)" in error
        clock.advance(3.0)  # past the due time, not only at it
        manager.refresh()
        assert manager.status()["verification_failures_total"] == 2
    finally:
        manager.close()


def test_a_version_open_three_times_keeps_its_spill_directory_until_the_last_closes(
    managers, source
):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    spill = manager.cache.spill_directory(v1.version)
    with manager.lease() as first, manager.lease():
        source.publish(quantity=2)
        manager.refresh()
        source.point_to(v1)
        manager.refresh()  # v1 opened a second time
        with manager.lease() as second:
            source.publish(quantity=3)
            manager.refresh()
            source.point_to(v1)
            manager.refresh()  # and a third: two of them still leased
            assert second is not first
        assert spill.is_dir()
    assert first.closed and spill.is_dir()  # the third still serves v1
    assert quantity(manager) == (v1.version, 1)
    manager.close()
    assert not spill.exists()


def test_serving_cached_ends_when_the_store_confirms_the_same_version(managers, source, store):
    first = managers()
    v1 = source.publish(quantity=1)
    first.refresh()
    store.down = True
    second = managers()
    second.refresh()
    assert second.status()["serving_cached"] is True
    store.down = False
    assert second.refresh() is False  # the store names the version it serves
    assert second.status()["serving_cached"] is False and quantity(second) == (v1.version, 1)


def test_a_retired_version_closes_only_after_its_last_lease(managers, source):
    manager = managers()
    v1 = source.publish(quantity=1)
    manager.refresh()
    with manager.lease() as old:
        with manager.lease():
            source.publish(quantity=2)
            manager.refresh()
        assert not old.closed  # one lease is still running on it
        assert old.con.execute("SELECT max(quantity) FROM inventory").fetchone() == (1,)
    assert old.closed and old.version == v1.version
