"""Hot swap under load, rollback and corrupted objects, against the API under
Gunicorn (2 workers) and a real SeaweedFS store."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from analytics_shared.manifest import MANIFEST_KEY, Manifest
from testsupport.api_server import ApiServer
from testsupport.snapshots import QueryLoad, TinyWarehouse, run_etl, store_from_env, wait_for

ROWS = 200


@pytest.fixture
def api_env(s3_env, auth_env, data_dir) -> dict[str, str]:
    return {
        **s3_env,
        **auth_env,
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_REQUESTS": "1000000",
        "RATE_LIMIT_WINDOW": "1",
    }


@pytest.fixture
def warehouse(api_env, tmp_path) -> Iterator[TinyWarehouse]:
    wh = TinyWarehouse(tmp_path, store_from_env(api_env), rows=ROWS)
    yield wh
    wh.close()


def start_api(env: dict[str, str], poll: float, log_path) -> ApiServer:
    return ApiServer(
        {**env, "SNAPSHOT_POLL_SECONDS": str(poll)}, workers=2, log_path=log_path
    ).start(ready_timeout=120)


def ask(client: httpx.Client) -> tuple[str, int]:
    r = client.get("/query", params={"q": "SELECT max(quantity) AS q FROM inventory"})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["data_version"], body["data"][0]["q"]


def all_answers_are(client: httpx.Client, version: str, times: int = 8) -> bool:
    """Several answers in a row from `version` (requests spread over both workers)."""
    return all(ask(client)[0] == version for _ in range(times))


@pytest.mark.slow
def test_ten_versions_under_continuous_load_without_a_failed_request(
    api_env, warehouse, issuer, tmp_path
):
    published: dict[str, int] = {}
    first = warehouse.publish(1)
    published[first.version] = 1
    api = start_api(api_env, poll=0.3, log_path=tmp_path / "api.log")
    load = QueryLoad(api.url, [issuer.mint(sub=f"load-{i}") for i in range(4)])
    try:
        load.start()
        for q in range(2, 12):
            manifest = warehouse.publish(q)
            published[manifest.version] = q
            # Let the API pick it up before the next one (both workers poll on their own).
            wait_for(
                lambda v=manifest.version: any(r[1] == v for r in load.snapshot()[-50:]),
                timeout=60,
                what=f"a response from {manifest.version}",
            )
        time.sleep(1.0)
    finally:
        load.stop()
        api.stop()

    results = load.snapshot()
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    assert len(results) > 100
    seen = {r[1] for r in results}
    assert seen <= set(published), seen - set(published)
    # every version published under load answered while the clients were querying
    assert set(published) - {first.version} <= seen
    for _status, version, row, _ in results:
        # Each answer is consistent with the version that claims to have produced it.
        assert row == {"q": published[version], "lo": published[version], "n": ROWS}


@pytest.mark.slow
def test_rollback_reaches_the_api_within_one_poll_interval(api_env, warehouse, issuer, tmp_path):
    poll = 2.0
    v1 = warehouse.publish(1)
    v2 = warehouse.publish(2)
    api = start_api(api_env, poll=poll, log_path=tmp_path / "api.log")
    token = issuer.mint(sub="rollback-user", scopes="read:analytics read:status")
    try:
        with httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            wait_for(lambda: all_answers_are(client, v2.version), timeout=60, what="v2 everywhere")
            store = store_from_env(api_env)
            with ThreadPoolExecutor(1) as pool:
                rollback = pool.submit(run_etl, ["rollback", v1.version], api_env)
                # While the CLI runs: when the store's manifest turns to v1 (the
                # commit), and when each worker (by pid, a new connection per look)
                # first answers from v1.
                committed: list[float] = []
                on_v1: dict[int, float] = {}

                def both_workers_on_v1() -> bool:
                    if not committed:
                        manifest = Manifest.from_json(store.get_bytes(MANIFEST_KEY)[0])
                        if manifest.version == v1.version:
                            committed.append(time.monotonic())
                    h = client.get("/health", headers={"Connection": "close"}).json()
                    if h["data_version"] == v1.version:
                        on_v1.setdefault(h["worker_pid"], time.monotonic())
                    return bool(committed) and len(on_v1) == 2

                wait_for(both_workers_on_v1, timeout=90, interval=0.01, what="v1 on both")
                result = rollback.result(timeout=120)
            assert result.returncode == 0, result.stderr[-3000:]
            assert all_answers_are(client, v1.version) and ask(client) == (v1.version, 1)
            health = client.get("/health").json()
            assert health["data_version"] == v1.version and health["status"] == "ok"
    finally:
        api.stop()
    # One poll interval, plus the time to fetch, verify and open v1 (a small snapshot:
    # well under a second on an idle machine; 2 s here for a shared, loaded one).
    elapsed = {pid: round(t - committed[0], 3) for pid, t in on_v1.items()}
    assert max(elapsed.values()) <= poll + 2.0, f"seconds from the commit to each worker: {elapsed}"
    current = Manifest.from_json(store_from_env(api_env).get_bytes("current/manifest.json")[0])
    assert current.version == v1.version and current.previous_version == v2.version


class CorruptingWarehouse(TinyWarehouse):
    """Publishes normally, but damages the uploaded object just before the commit."""

    damage: str = "none"

    def __init__(self, *args, client, bucket_key, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        original_commit = self.publisher.commit

        def commit(manifest: Manifest, etag: str | None) -> None:
            if self.damage != "none":
                bucket, full_key = bucket_key(manifest.snapshot_key)
                data = bytearray(client.get_object(Bucket=bucket, Key=full_key)["Body"].read())
                if self.damage == "flip":
                    for i in range(0, len(data), max(1, len(data) // 7)):
                        data[i] ^= 0x5A
                else:
                    data = data[: len(data) // 2]
                client.put_object(Bucket=bucket, Key=full_key, Body=bytes(data))
            original_commit(manifest, etag)

        self.publisher.commit = commit  # type: ignore[method-assign]


@pytest.mark.slow
def test_corrupted_objects_are_refused_and_the_previous_version_keeps_serving(
    api_env, seaweedfs, issuer, tmp_path
):
    bucket, prefix = api_env["STORAGE_URL"].removeprefix("s3://").split("/", 1)
    warehouse = CorruptingWarehouse(
        tmp_path,
        store_from_env(api_env),
        rows=ROWS,
        client=seaweedfs.client(),
        bucket_key=lambda key: (bucket, f"{prefix}/{key}"),
    )
    v1 = warehouse.publish(1)
    api = start_api(api_env, poll=0.3, log_path=tmp_path / "api.log")
    # read:status: /health shows the refusal's details only to that scope.
    token = issuer.mint(sub="corruption-user", scopes="read:analytics read:status")
    try:
        with httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            for quantity, damage in ((10, "flip"), (11, "truncate")):
                warehouse.damage = damage
                bad = warehouse.publish(quantity)

                # Every worker sees the new manifest, refuses it, and keeps v1.
                def refused(bad=bad) -> bool:
                    h = client.get("/health").json()
                    return (
                        h["latest_version_seen"] == bad.version
                        and h["verification_failures_total"] >= 1
                        and h["data_version"] == v1.version
                    )

                for _ in range(2):  # both workers (requests land on either)
                    wait_for(refused, timeout=60, what=f"{damage}: refusal reported")
                health = client.get("/health").json()
                assert health["status"] == "degraded" and health["last_refresh_failed"]
                assert "verification" in health["last_refresh_error"]
                for _ in range(10):
                    assert ask(client) == (v1.version, 1)

            warehouse.damage = "none"
            good = warehouse.publish(3)
            wait_for(lambda: all_answers_are(client, good.version), timeout=60, what="good version")
            health = client.get("/health").json()
            assert health["status"] == "ok" and health["data_version"] == good.version
    finally:
        api.stop()
        warehouse.close()


def worker_pids(client: httpx.Client, tries: int = 40) -> set[int]:
    """The pids of the workers answering /health (a new connection each time, so
    the kernel spreads them over the workers)."""
    headers = {"Connection": "close"}
    return {client.get("/health", headers=headers).json()["worker_pid"] for _ in range(tries)}


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_serving_goes_on(api_env, warehouse, issuer, tmp_path):
    first = warehouse.publish(1)
    api = start_api(api_env, poll=0.3, log_path=tmp_path / "api.log")
    load = QueryLoad(api.url, [issuer.mint(sub=f"kill-{i}") for i in range(4)])
    try:
        status = {"Authorization": f"Bearer {issuer.mint(sub='ops', scopes='read:status')}"}
        with httpx.Client(base_url=api.url, timeout=30, headers=status) as health:
            before = wait_for(lambda: len(p := worker_pids(health)) == 2 and p, 30, what="2 pids")
            load.start()
            wait_for(lambda: len(load.snapshot()) > 50, timeout=30, what="load running")
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            # Gunicorn forks a replacement, which loads the snapshot before it accepts.
            after = wait_for(
                lambda: (p := worker_pids(health)) - before and p, 60, what="a new worker"
            )
            assert victim not in after
            # The replacement follows new versions like any worker.
            second = warehouse.publish(2)
            with httpx.Client(base_url=api.url, timeout=30) as client:
                client.headers["Authorization"] = f"Bearer {issuer.mint(sub='kill-check')}"
                wait_for(lambda: all_answers_are(client, second.version), 60, what="version 2")
            time.sleep(0.5)
    finally:
        load.stop()
        api.stop()

    results = load.snapshot()
    failures = [r for r in results if r[0] != 200]
    # Only a request in flight on the killed worker may fail, at most one per
    # client, and only as a dropped connection: never an error answer (no 503
    # from a replacement that has no data yet).
    assert len(failures) <= len(load.tokens), failures
    assert all(status == 0 for status, *_ in failures), failures
    assert {r[1] for r in results if r[0] == 200} <= {first.version, second.version}
