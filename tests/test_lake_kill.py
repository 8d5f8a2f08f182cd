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

A cycle that reloaded tables (the first sync, `--full-refresh`), killed at any
step: the restart sends the lake a delta, not every table whole again (a full
lake rewrite that every API host's replicator would download).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from analytics_shared.lake import run_lake
from etl_service.demo_source import create_demo_source
from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.api_server import ApiServer
from testsupport.lake import (
    LAKE_TABLES,
    answer,
    assert_equal_to_source,
    change_inventory,
    lake_config,
    lake_platform_env,
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


def _sync_killed_at(
    point: str, env: dict[str, str], tmp_path: Path, args: tuple[str, ...] = ()
) -> None:
    """`analytics-etl sync`, frozen at `point` of the lake commit, then kill -9
    of its whole process group (the ETL and its lake process, as when the
    container dies)."""
    flag = tmp_path / f"paused-{point}"
    proc = subprocess.Popen(
        [ETL, "sync", *args],
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


# `analytics-etl <args>` whose process group is killed (-9) when the cycle
# reaches `StateStore.finish_run`: published, the run and watermarks not recorded.
_KILLED_AT_FINISH_RUN = """
import os, signal, sys
from etl_service.state import StateStore
StateStore.finish_run = lambda *a, **k: os.killpg(os.getpgrp(), signal.SIGKILL)
from etl_service.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _restart_sends_a_delta(env: dict[str, str], source: sa.Engine, tmp_path: Path) -> None:
    """The restarted ETL's cycle commits the changed keys only, and the lake,
    the manifest, the working DuckDB and the source agree."""
    engine = SyncEngine.from_settings(EtlSettings(**env), progress=False)  # type: ignore[arg-type]
    try:
        result = engine.run_cycle()
        assert result.status == "success" and result.published, result.error
        assert engine.lake is not None
        sent = engine.lake.last_commit
        modes = {t: a["mode"] for t, a in sent["tables"].items() if t in LAKE_TABLES}
        assert modes == {"inventory": "delta"}, sent  # orders did not change
        # What sending the tables whole again costs (the replicators download it too).
        whole_bytes = sum(
            Path(engine.warehouse.export_changes(t, ["id"], tmp_path, full=True)["full"])
            .stat()
            .st_size
            for t in LAKE_TABLES
        )
        assert sent["sent_bytes"] < whole_bytes / 4, (sent["sent_bytes"], whole_bytes)
        for table in LAKE_TABLES:
            assert_equal_to_source(source, engine.warehouse.con, table, "working DuckDB")
    finally:
        engine.close()
    manifest = published_manifest(env)
    assert manifest.lake is not None and manifest.version == result.version
    assert manifest.lake.snapshot_id == sent["snapshot_id"] == lake_snapshots(env)["current"]
    for table in LAKE_TABLES:
        con = lake_table(lake_config(env), table, tmp_path / "lake")
        try:
            assert_equal_to_source(source, con, table, "lake after the restart:")
        finally:
            con.close()
    print(json.dumps({"restart_sent_bytes": sent["sent_bytes"], "whole_bytes": whole_bytes}))


def test_a_first_sync_killed_after_publishing_is_followed_by_a_delta(
    platform_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    """The first sync dies after its manifest but before recording its watermarks:
    the restart loads every table again (a first run), and sends only what
    differs from the tables the lake already holds."""
    env = lake_platform_env(platform_env, pg_url)
    source = create_demo_source(pg_url)
    try:
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_AT_FINISH_RUN, "sync"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=240,
            start_new_session=True,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        first = published_manifest(env)
        assert first.lake is not None and set(first.tables) == set(LAKE_TABLES)
        change_inventory(source, delta=7, delete_id=9, rows=200)
        _restart_sends_a_delta(env, source, tmp_path)
    finally:
        source.dispose()


def test_a_full_refresh_killed_before_its_lake_commit_is_followed_by_a_delta(
    lake_platform: tuple[dict[str, str], sa.Engine], tmp_path: Path
) -> None:
    """`sync --full-refresh` dies inside its lake commit: the restart sends the
    keys the reload changed, not every table whole."""
    env, source = lake_platform
    change_inventory(source, delta=7, delete_id=9, rows=200)
    _sync_killed_at("before-commit", env, tmp_path, ("--full-refresh",))
    _restart_sends_a_delta(env, source, tmp_path)
