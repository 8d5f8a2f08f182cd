"""kill -9 of the ETL (with its lake process) inside a lake commit, at the two
steps where it matters; the lake, the manifest and the API stay consistent.

- `before-commit`: the cycle's rows are written to the lake's data path but
  not committed. The lake stays at the manifest's snapshot; the files are
  orphans, which maintenance deletes (and only them).
- `after-commit`: the lake snapshot is committed but the manifest still names
  the previous one. The manifest never names an uncommitted snapshot.

Each time the API keeps serving the previous version throughout, and the next
cycle re-sends the same changes: lake == working DuckDB == source, and the
API serves the new version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from analytics_shared.lake import run_lake
from testsupport.api_server import ApiServer
from testsupport.lake import (
    LAKE_TABLES,
    answer,
    assert_equal_to_source,
    change_inventory,
    lake_config,
    lake_snapshots,
    lake_table,
    published_manifest,
    source_inventory,
    wait_for_version,
    working_db,
)
from testsupport.snapshots import ETL, run_etl, store_from_env, wait_for


def _orphans(env: dict[str, str]) -> set[str]:
    """Data and delete files in the store that the catalog does not name."""
    store = store_from_env(env)
    stored = {o.key.rsplit("/", 1)[-1] for o in store.list("lake/") if o.key.endswith(".parquet")}
    schema = env.get("LAKE_METADATA_SCHEMA", "ducklake")
    engine = sa.create_engine(sa.make_url(env["DATABASE_URL"]).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as conn:
            named = {
                str(path).rsplit("/", 1)[-1]
                for (path,) in conn.execute(
                    sa.text(
                        f'SELECT path FROM "{schema}".ducklake_data_file UNION ALL'
                        f' SELECT path FROM "{schema}".ducklake_delete_file UNION ALL'
                        f' SELECT path FROM "{schema}".ducklake_files_scheduled_for_deletion'
                    )
                )
            }
    finally:
        engine.dispose()
    return stored - named


def _sync_killed_at(point: str, env: dict[str, str], tmp_path: Path) -> None:
    """`analytics-etl sync`, frozen at `point` of the lake commit, then kill -9
    of its whole process group (the ETL and its lake process, as when the
    container dies)."""
    flag = tmp_path / f"paused-{point}"
    proc = subprocess.Popen(
        [ETL, "sync"],
        env={**os.environ, **env, "LAKE_PAUSE_AT": f"{point}:{flag}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: flag.exists() or proc.poll() is not None, timeout=120, what=point)
        assert proc.poll() is None, f"the sync ended ({proc.returncode}) before {point}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_inside_a_lake_commit(
    lake_platform: tuple[dict[str, str], sa.Engine], issuer, tmp_path: Path
) -> None:
    env, source = lake_platform
    api = ApiServer(env, workers=1, log_path=tmp_path / "api.log")
    token = issuer.mint(sub="lake-kill")
    try:
        api.start(ready_timeout=120)
        for n, point in enumerate(["before-commit", "after-commit"]):
            _kill_and_recover(point, n, env, source, api, token, tmp_path)
    finally:
        api.stop()


def _kill_and_recover(
    point: str,
    n: int,
    env: dict[str, str],
    source: sa.Engine,
    api: ApiServer,
    token: str,
    tmp_path: Path,
) -> None:
    old = published_manifest(env)
    assert old.lake is not None
    served_before = source_inventory(source)
    assert answer(api, token)["data"] == served_before

    change_inventory(source, delta=7, delete_id=9 + n, rows=200)  # past inlining: files
    started = time.monotonic()
    _sync_killed_at(point, env, tmp_path)
    killed_after = time.monotonic() - started

    # The manifest still names the old snapshot, which the lake has committed ...
    manifest = published_manifest(env)
    assert manifest.version == old.version, point
    lake = lake_snapshots(env)
    assert old.lake.snapshot_id in {s["snapshot_id"] for s in lake["snapshots"]}
    # ... and the lake is at the old snapshot or at the whole new one.
    if point == "before-commit":
        assert lake["current"] == old.lake.snapshot_id, lake
        orphans = _orphans(env)
        assert orphans, "the killed commit wrote no file"
    else:
        assert lake["current"] > old.lake.snapshot_id, lake
    # The API served the old version throughout and still does.
    body = answer(api, token)
    assert (body["data_version"], body["data"]) == (old.version, served_before), point

    # The next cycle re-sends the changes and everything converges.
    again = run_etl(["sync"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    new = published_manifest(env)
    assert new.lake is not None and new.lake.snapshot_id > old.lake.snapshot_id
    assert new.lake.snapshot_id == lake_snapshots(env)["current"]
    if point == "before-commit":
        assert _orphans(env) >= orphans  # a cycle leaves them; maintenance removes them
        done = run_lake(
            lake_config(env),
            "maintain",
            {
                "retention_seconds": 86400,
                "keep_from": new.lake.snapshot_id,
                "orphan_grace_seconds": 0,
            },
        )
        assert done["deleted_orphans"] >= len(orphans)
        assert not _orphans(env)
    wait_for_version(api, new.version)
    assert answer(api, token)["data"] == source_inventory(source) != served_before, point
    working = working_db(env)
    try:
        for table in LAKE_TABLES:
            assert_equal_to_source(source, working, table, "working DuckDB")
            con = lake_table(lake_config(env), table, tmp_path / f"lake-{point}")
            try:
                assert_equal_to_source(source, con, table, f"lake after {point}:")
            finally:
                con.close()
    finally:
        working.close()
    print(json.dumps({"point": point, "killed_after_s": round(killed_after, 2)}))
