"""A full disk under DATA_DIR: the cycle fails with a clear error, loses nothing,
publishes nothing half-made, and the worker heals once space is back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from etl_service.demo_source import create_demo_source

NO_SPACE = "No space left on device"


@pytest.mark.parametrize(
    "leave",
    [0, 300_000],
    # 0: the merge's WAL write fails. 300 kB: the merge commits, and the
    # checkpoint before the export fails, which DuckDB treats as fatal (the
    # connection is invalidated until the database is opened again).
    ids=["merge", "checkpoint"],
)
def test_a_full_disk_fails_the_cycle_and_the_worker_heals(
    pg_url, tmp_path, tiny_disk, make_engine, same_rows, leave
):
    disk = tiny_disk("etl-data", 64)
    source = create_demo_source(pg_url)
    etl = make_engine(
        DATA_DIR=str(disk.root),
        STORAGE_URL=(tmp_path / "store").resolve().as_uri(),
        TABLES_TO_SYNC="inventory,orders",
    )
    first = etl.run_cycle()
    assert first.status == "success" and first.published
    watermark = etl.state.table("inventory").watermark  # type: ignore[union-attr]

    with source.begin() as conn:
        conn.execute(sa.text("UPDATE inventory SET quantity = quantity + 1, updated_at = now()"))
    disk.fill(leave=leave)
    for _ in range(2):  # and again while the disk stays full: no crash, same story
        failed = etl.run_cycle()
        assert failed.status in ("failed", "partial") and not failed.published
        assert NO_SPACE in (failed.error or ""), failed.error
        assert etl.state.recent_runs(1)[0]["status"] == failed.status
        # Nothing half-made was published; the readers keep the last version.
        assert etl.publisher.current().version == first.version  # type: ignore[union-attr]
    if leave == 0:  # the merge never committed: the watermark did not move
        assert etl.state.table("inventory").watermark == watermark  # type: ignore[union-attr]

    # Every failed cycle is on record as finished, none left "running".
    assert all(run["status"] != "running" for run in etl.state.recent_runs(3))

    disk.release()
    healed = etl.run_cycle()
    assert healed.status == "success" and healed.published, healed.error
    assert etl.publisher.current().version == healed.version  # type: ignore[union-attr]
    same_rows(source, etl.warehouse.con, "inventory")
    same_rows(source, etl.warehouse.con, "orders")
    source.dispose()
