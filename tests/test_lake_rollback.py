"""Operations in lake mode, end to end: `analytics-etl versions` lists the
lake's snapshots, `rollback` restores one as a new snapshot the API follows
within its poll, `status` and `/health` show the version and the replica's
lag; the rollback holds until the source changes, then the next cycle
publishes the source's data again."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from testsupport.api_server import ApiServer
from testsupport.lake import (
    answer,
    change_inventory,
    published_manifest,
    source_inventory,
    wait_for_version,
)
from testsupport.snapshots import run_etl


def _etl_json(args: list[str], env: dict[str, str]) -> object:
    done = run_etl(args, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _version_of(done_stdout: str) -> str:
    return str(json.loads(done_stdout.strip().splitlines()[-1])["version"])


@pytest.mark.slow
def test_rollback_in_lake_mode(
    lake_platform: tuple[dict[str, str], sa.Engine], issuer, tmp_path: Path
) -> None:
    env, source = lake_platform
    v1, rows_v1 = published_manifest(env).version, source_inventory(source)
    change_inventory(source, delta=100, delete_id=3)
    second = run_etl(["sync"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    v2, rows_v2 = _version_of(second.stdout), source_inventory(source)
    assert v1 != v2 and rows_v1 != rows_v2

    listed = _etl_json(["versions", "--json"], env)
    assert isinstance(listed, list)
    assert [v["version"] for v in listed] == [v2, v1]
    assert [v["current"] for v in listed] == [True, False]
    assert listed[1]["rows"]["inventory"] == len(rows_v1)
    assert listed[0]["rows"]["inventory"] == len(rows_v2)

    api = ApiServer(env, workers=2, log_path=tmp_path / "api.log")
    token = issuer.mint(sub="lake-rollback")
    details = {"Authorization": f"Bearer {issuer.mint(scopes='read:status')}"}
    try:
        api.start(ready_timeout=120)
        wait_for_version(api, v2)
        assert answer(api, token)["data"] == rows_v2

        done = run_etl(["rollback", v1], env)
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.strip().splitlines()[-1])
        v3 = outcome["version"]
        assert outcome["rolled_back_to"] == v1 and v3 not in (v1, v2)
        assert int(v3.removeprefix("lake-")) > int(v2.removeprefix("lake-")), "history kept"

        wait_for_version(api, v3)
        body = answer(api, token)
        assert (body["data_version"], body["data"]) == (v3, rows_v1)
        lake = httpx.get(api.url + "/health", headers=details, timeout=10).json()["lake_replica"]
        assert lake["version"] == v3 and lake["lag_snapshots"] == 0, lake
        assert lake["bootstraps_total"] == 1, "the replica followed the rollback by the change"

        listed = _etl_json(["versions", "--json"], env)
        assert [v["version"] for v in listed][:3] == [v3, v2, v1]
        assert listed[0]["current"] and f"rollback to snapshot {v1[5:]}" in listed[0]["message"]
        assert listed[0]["rows"] == listed[2]["rows"]
        status = _etl_json(["status", "--json"], env)
        assert isinstance(status, dict)
        assert status["lake"]["version"] == v3 and not status["lake"]["unpublished_snapshots"]
        assert status["lake"]["rolled_back_from"] == v2

        # The rollback holds while the source is unchanged ...
        quiet = run_etl(["sync"], env)
        assert quiet.returncode == 0, quiet.stderr[-3000:]
        assert _version_of(quiet.stdout) == v3
        # ... and the next change publishes the source's data, not the rollback plus a delta.
        change_inventory(source, delta=1)
        moved = run_etl(["sync"], env)
        assert moved.returncode == 0, moved.stderr[-3000:]
        v4 = _version_of(moved.stdout)
        wait_for_version(api, v4)
        assert answer(api, token)["data"] == source_inventory(source)

        refused = run_etl(["rollback", "lake-99999"], env)
        assert refused.returncode != 0
        assert "snapshot 99999 is not in the lake" in refused.stderr, refused.stderr[-2000:]
    finally:
        api.stop()
