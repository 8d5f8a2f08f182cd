"""Retention and compaction against replicas: maintenance (flush, merge,
expire, delete old files) with a zero retention while one host's replica is up
to date and another's is left behind.

- The snapshot the manifest names survives expiry, however old: a host that
  starts now bootstraps it without waiting for the next cycle.
- The up-to-date replica keeps advancing by the change: no file it needs was
  deleted, no bootstrap.
- The replica left behind past the retention re-bootstraps cleanly (a fresh
  copy) and serves the source's rows.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from api_service.data.lake_replica import LakeReplicator
from etl_service.demo_source import create_demo_source
from etl_service.sync import SyncEngine
from testsupport.lake import (
    LAKE_TABLES,
    assert_equal_to_source,
    change_inventory,
    lake_snapshots,
)


def _cycle(etl: SyncEngine) -> str:
    result = etl.run_cycle()
    assert result.status == "success", result.error
    assert result.version is not None
    return result.version


def test_maintenance_never_strands_a_replica(
    pg_url: str,
    lake_env: dict[str, str],
    lake_etl: Callable[..., SyncEngine],
    make_replicator: Callable[[str], LakeReplicator],
) -> None:
    source = create_demo_source(pg_url)
    etl = lake_etl(
        SYNC_SETTLE_SECONDS="0",
        RECONCILE_INTERVAL_SECONDS="0",
        LAKE_SNAPSHOT_RETENTION_SECONDS="0",
    )
    try:
        first = _cycle(etl)
        behind, follower = make_replicator("behind"), make_replicator("follower")
        assert behind.run_once() == first
        assert follower.run_once() == first
        for n in range(3):
            change_inventory(source, delta=n + 1, delete_id=300 + n, rows=200)
            version = _cycle(etl)
            assert follower.run_once() == version
        old = lake_snapshots(lake_env)["snapshots"]

        done = etl.lake.maintain() if etl.lake else None
        assert done is not None, "maintenance failed (see the log)"
        assert done["expired"] >= 3 and done["deleted_files"] >= 1, done

        manifest = etl.publisher.current()
        assert manifest is not None and manifest.lake is not None
        kept = {s["snapshot_id"] for s in lake_snapshots(lake_env)["snapshots"]}
        assert manifest.lake.snapshot_id in kept, "the manifest names an expired snapshot"
        assert (
            not {s["snapshot_id"] for s in old if s["snapshot_id"] < manifest.lake.snapshot_id}
            & kept
        )

        # A host starting now serves the published version (nothing newer exists).
        fresh = make_replicator("fresh")
        assert fresh.run_once() == manifest.version

        change_inventory(source, delta=10, delete_id=30)
        latest = _cycle(etl)
        for replica in (follower, fresh, behind):
            assert replica.run_once() == latest
        assert follower.status["bootstraps_total"] == 1, "the follower advanced by the change"
        assert fresh.status["bootstraps_total"] == 1
        assert behind.status["bootstraps_total"] == 2, "behind the retention: one fresh copy"

        for replica in (follower, fresh, behind):
            con = duckdb.connect(str(replica.cache.directory / f"{latest}.db"), read_only=True)
            try:
                for table in LAKE_TABLES:
                    assert_equal_to_source(source, con, table, str(replica.cache.directory))
            finally:
                con.close()
    finally:
        source.dispose()
