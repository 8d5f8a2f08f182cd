"""Schema contracts: a real ALTER TABLE on the PostgreSQL source while
`analytics-etl run` (the scheduler) is syncing every second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa

from analytics_shared.manifest import Manifest
from analytics_shared.object_store import LocalObjectStore
from analytics_shared.snapshot_file import fetch_verified
from etl_service.demo_source import create_demo_source
from etl_service.state import StateStore

BIN = Path(sys.executable).parent
NOW = "(now() AT TIME ZONE 'UTC')"


def _exec(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for sql in statements:
            conn.execute(sa.text(sql))


class Scheduler:
    def __init__(self, pg_url: str, data_dir: Path, contract: str, webhook: str) -> None:
        self.store_root = (data_dir / "store").resolve()
        self.env = {
            **os.environ,
            "SOURCE_URL": pg_url,
            "DATABASE_URL": pg_url,
            "DATA_DIR": str(data_dir),
            "STORAGE_URL": self.store_root.as_uri(),
            "TABLES_TO_SYNC": "inventory,orders",
            "SYNC_INTERVAL_SECONDS": "1",
            "SYNC_SETTLE_SECONDS": "0",
            "SYNC_LOOKBACK_SECONDS": "5",
            "ETL_METRICS_PORT": "0",
            "MODELS_DIR": "",
            "RETRY_ATTEMPTS": "2",
            "RETRY_BASE_SECONDS": "0.01",
            "TABLE_CONFIG": json.dumps({"inventory": {"schema_contract": contract}}),
            "ALERT_WEBHOOK_URL": webhook,
        }
        self.log = (data_dir / "etl.log").open("wb")
        self.proc = subprocess.Popen(
            [str(BIN / "analytics-etl"), "run"], env=self.env, stdout=self.log, stderr=self.log
        )

    def manifest(self) -> Manifest | None:
        path = self.store_root / "current" / "manifest.json"
        return Manifest.from_json(path.read_bytes()) if path.exists() else None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the scheduler died"
            value = check()
            if value:
                return value
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture
def scheduler(pg_url, data_dir, receiver) -> Iterator[Callable[[str], Scheduler]]:
    running: list[Scheduler] = []

    def start(contract: str) -> Scheduler:
        running.append(Scheduler(pg_url, data_dir, contract, receiver.url))
        return running[-1]

    yield start
    for s in running:
        s.stop()


@pytest.fixture
def source(pg_url):
    engine = create_demo_source(pg_url)
    yield engine
    engine.dispose()


def _columns(manifest: Manifest, table: str) -> dict[str, str]:
    return {c.name: c.type for c in manifest.tables[table].columns}


def _published_columns(etl: Scheduler, tmp_path: Path, table: str) -> list[str]:
    manifest = etl.manifest()
    assert manifest is not None
    dest = tmp_path / f"check-{manifest.version}.db"
    fetch_verified(LocalObjectStore(etl.store_root), manifest, dest)
    with duckdb.connect(str(dest), read_only=True) as con:
        return [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]


def _status(etl: Scheduler) -> dict[str, Any]:
    out = subprocess.run(
        [str(BIN / "analytics-etl"), "status"],
        env=etl.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def _run_logs_with_changes(etl: Scheduler) -> list[dict[str, Any]]:
    logs = []
    for path in (etl.store_root / "logs").rglob("*.json"):
        record = json.loads(path.read_text())
        if record.get("schema_changes"):
            logs.append(record)
    return logs


def _alerts_about(receiver, table: str) -> list[str]:
    return [m["text"] for m in receiver.received if f"source table {table} changed" in m["text"]]


def test_evolve_reloads_the_new_shape_and_announces_it(source, scheduler, receiver, tmp_path):
    etl = scheduler("evolve")
    first = etl.wait_for("the first version", etl.manifest)
    assert "bin_code" not in _columns(first, "inventory")

    _exec(
        source,
        "ALTER TABLE inventory ADD COLUMN bin_code varchar(8) NOT NULL DEFAULT 'A-1'",
        "ALTER TABLE inventory ALTER COLUMN reorder_level TYPE bigint",
    )
    evolved = etl.wait_for(
        "the new shape published",
        lambda: (m := etl.manifest()) and "bin_code" in _columns(m, "inventory") and m,
    )
    assert _columns(evolved, "inventory")["reorder_level"] == "BIGINT"
    assert "bin_code" in _published_columns(etl, tmp_path, "inventory")
    [change] = [c for c in evolved.schema_changes if c.table == "inventory"]
    assert change.action == "evolved" and change.contract == "evolve"
    assert [c.name for c in change.added] == ["bin_code"]
    assert change.retyped == {"reorder_level": ["INTEGER", "BIGINT"]}

    texts = etl.wait_for("the alert", lambda: _alerts_about(receiver, "inventory"))
    assert "added bin_code VARCHAR" in texts[0] and "reorder_level INTEGER -> BIGINT" in texts[0]
    assert "evolve: evolved" in texts[0]
    status = _status(etl)
    assert status["schema_changes"][0]["table_name"] == "inventory"
    assert status["schema_changes"][0]["action"] == "evolved"
    assert _run_logs_with_changes(etl)[0]["schema_changes"][0]["table"] == "inventory"
    time.sleep(3)  # later cycles see no further change: one alert, one record
    assert len(_alerts_about(receiver, "inventory")) == 1
    assert len(_status(etl)["schema_changes"]) == 1


def test_freeze_fails_the_table_with_a_dead_letter_and_keeps_the_old_shape(
    source, scheduler, receiver, tmp_path, pg_url
):
    etl = scheduler("freeze")
    first = etl.wait_for("the first version", etl.manifest)
    old_columns = _columns(first, "inventory")

    _exec(source, "ALTER TABLE inventory ALTER COLUMN quantity TYPE numeric(12, 3)")
    state = StateStore(pg_url)
    try:
        letter = etl.wait_for(
            "a dead letter for inventory",
            lambda: [d for d in state.dead_letters() if d["table_name"] == "inventory"],
        )[0]
    finally:
        state.close()
    assert "SchemaContractError" in letter["error"]
    assert "retyped quantity INTEGER -> DECIMAL(12,3)" in letter["error"]
    assert "'freeze'" in letter["error"]

    # The other table keeps syncing and publishing; inventory keeps its old shape.
    _exec(source, f"UPDATE orders SET status = 'frozen-test', updated_at = {NOW} WHERE id = 1")
    later = etl.wait_for(
        "a version with the orders change",
        lambda: (m := etl.manifest()) and m.version != first.version and m,
    )
    assert _columns(later, "inventory") == old_columns
    assert _published_columns(etl, tmp_path, "inventory") == list(old_columns)
    [change] = [c for c in later.schema_changes if c.table == "inventory"]
    assert change.action == "refused"

    texts = etl.wait_for("the alert", lambda: _alerts_about(receiver, "inventory"))
    assert "freeze: refused" in texts[0]
    time.sleep(3)  # refused again every cycle, but recorded and alerted once
    assert len(_alerts_about(receiver, "inventory")) == 1
    assert [c["action"] for c in _status(etl)["schema_changes"]] == ["refused"]


def test_discard_new_columns_keeps_syncing_without_them(source, scheduler, receiver, tmp_path):
    etl = scheduler("discard_new_columns")
    first = etl.wait_for("the first version", etl.manifest)

    _exec(
        source,
        "ALTER TABLE inventory ADD COLUMN bin_code varchar(8)",
        f"UPDATE inventory SET quantity = 4242, bin_code = 'Z-9', updated_at = {NOW} WHERE id = 7",
    )
    later = etl.wait_for(
        "the update published",
        lambda: (m := etl.manifest()) and m.version != first.version and m,
    )
    assert _columns(later, "inventory") == _columns(first, "inventory")
    manifest = etl.manifest()
    dest = tmp_path / "discard.db"
    fetch_verified(LocalObjectStore(etl.store_root), manifest, dest)
    with duckdb.connect(str(dest), read_only=True) as con:
        assert con.execute("SELECT quantity FROM inventory WHERE id = 7").fetchone() == (4242,)
        assert "bin_code" not in [r[0] for r in con.execute("DESCRIBE inventory").fetchall()]
    [change] = [c for c in manifest.schema_changes if c.table == "inventory"]
    assert change.action == "discarded" and [c.name for c in change.added] == ["bin_code"]
    texts = etl.wait_for("the alert", lambda: _alerts_about(receiver, "inventory"))
    assert "discard_new_columns: discarded" in texts[0]
    # Incremental, not reloaded: the table was never fully loaded again.
    status = _status(etl)
    runs = [r for r in status["runs"] if "inventory" in (r["rows"] or {})]
    assert all(r["rows"]["inventory"]["mode"] == "incremental" for r in runs[:-1])
