"""Per-run JSON logs: dated folders, daily pruning, and never failing a cycle."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from analytics_shared.object_store import LocalObjectStore
from etl_service.run_logs import RunLogStore


def test_run_logs_land_under_a_dated_folder(tmp_path):
    store = LocalObjectStore(tmp_path / "store")
    run_logs = RunLogStore(store)
    started = datetime.now(UTC) - timedelta(seconds=3)
    key = run_logs.write(
        {"run_id": 42, "status": "success", "started_at": started, "rows": {"inventory": 3}}
    )
    assert key is not None
    assert key.startswith(f"logs/etl_sync_{datetime.now(UTC):%Y-%m-%d}/")
    assert key.endswith("_42.json")
    doc = json.loads(store.get_bytes(key)[0])
    assert doc["status"] == "success" and doc["started_at"] == started.isoformat()


def test_run_logs_older_than_the_retention_are_pruned_once_a_day(store, monkeypatch):
    today = datetime.now(UTC).date()

    def day_key(days_ago: int) -> str:
        return f"logs/etl_sync_{today - timedelta(days=days_ago):%Y-%m-%d}/run_x_{days_ago}.json"

    for days_ago in (40, 31, 30, 1):
        store.put_bytes(day_key(days_ago), b"{}")
    store.put_bytes("logs/etl_sync_notes/readme.txt", b"not a day folder")
    run_logs = RunLogStore(store, retention_days=30)
    lists = []
    real_list = store.list
    monkeypatch.setattr(store, "list", lambda prefix="": lists.append(prefix) or real_list(prefix))

    new_key = run_logs.write({"run_id": 7})
    run_logs.write({"run_id": 8})  # same day: no second LIST
    keys = {o.key for o in real_list("logs/")}
    assert day_key(40) not in keys and day_key(31) not in keys
    assert {day_key(30), day_key(1), new_key, "logs/etl_sync_notes/readme.txt"} <= keys
    assert len(lists) == 1

    keep_all = RunLogStore(store, retention_days=0)
    store.put_bytes(day_key(400), b"{}")
    keep_all.write({"run_id": 9})
    assert day_key(400) in {o.key for o in real_list("logs/")}


def test_run_log_failures_never_raise(tmp_path):
    class Broken(LocalObjectStore):
        def put_bytes(self, *args, **kwargs):
            from analytics_shared.object_store import StoreUnavailable

            raise StoreUnavailable("down")

    run_logs = RunLogStore(Broken(tmp_path / "store"))
    assert run_logs.write({"run_id": 1}) is None
