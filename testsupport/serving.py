"""An in-process API over a snapshot published to a local folder store, for the
serving tests (encodings, cache, metrics, concurrency).

`build_database` writes a DuckDB file with a small `inventory` and a
`customers` table holding the awkward types (decimals, HUGEINT, UBIGINT,
BIGINT past 2**53, TIMESTAMPTZ, UUID, NULLs, unicode, control characters,
lists, blobs); `publish` puts it in the store as the next version.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import httpx
import uvicorn

from analytics_shared.manifest import Manifest, TableInfo
from analytics_shared.object_store import LocalObjectStore
from api_service.main import create_app
from api_service.settings import ApiSettings
from etl_service.export import export_snapshot
from etl_service.publisher import Publisher
from testsupport.ports import free_port

__all__ = ["build_database", "publish", "serving_client"]

CUSTOMERS_SQL = r"""
CREATE OR REPLACE TABLE customers (
    id INTEGER, name VARCHAR, balance DECIMAL(18,4), exact DECIMAL(38,10),
    huge HUGEINT, ubig UBIGINT, big BIGINT, ts TIMESTAMP, tstz TIMESTAMPTZ,
    day DATE, uid UUID, ratio DOUBLE, active BOOLEAN, tags VARCHAR[], raw BLOB
);
INSERT INTO customers VALUES
 (1, 'Zoë "Q" \ naïve ✓ 東京 🚀', 1234.5678, 12345678901234567890.1234567890,
  170141183460469231731687303715884105727, 18446744073709551615, 9007199254740993,
  TIMESTAMP '2026-03-01 12:34:56.789012', TIMESTAMPTZ '2026-03-01 12:00:00+02',
  DATE '2026-03-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 0.1, true, ['a', 'b"c'],
  '\xAA\x00'::BLOB),
 (2, 'tab' || chr(9) || 'newline' || chr(10) || 'bell' || chr(7), -0.0001, 0.0000000001,
  -42, 7, -9007199254740993,
  TIMESTAMP '1999-12-31 23:59:59', TIMESTAMPTZ '2026-07-01 00:00:00.5+00',
  DATE '1970-01-01', '00000000-0000-0000-0000-000000000000', 'nan'::DOUBLE, false, [], ''::BLOB),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (4, '', 0, 0, 9007199254740991, 9007199254740991, 12, TIMESTAMP '2026-01-01 00:00:00',
  TIMESTAMPTZ '2026-01-01 00:00:00+00', DATE '2026-01-01', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
  1e300, true, ['x'], 'hi'::BLOB);
"""


def build_database(path: Path, *, inventory_rows: int = 2000, marker: int = 0) -> Path:
    """A DuckDB file with `inventory` and `customers`; `marker` changes the data."""
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute(
            f"""CREATE TABLE inventory AS
            SELECT i::INTEGER AS id, (i % 50)::INTEGER AS product_id,
                   ['AMS-1', 'BER-2', 'NYC-1'][i % 3 + 1] AS warehouse,
                   ((i * 7919) % 1000 + {marker})::INTEGER AS quantity
            FROM range(1, {inventory_rows + 1}) t(i)"""
        )
        con.execute(CUSTOMERS_SQL)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path


def publish(db_path: Path, store_root: Path, work_dir: Path) -> Manifest:
    """Export `db_path` as a compact snapshot and publish it as the current version."""
    con = duckdb.connect(str(db_path))
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        snap = export_snapshot(con, work_dir / f"snapshot-{time.time_ns()}.db")
        tables = {
            name: TableInfo(row_count=count)
            for name, count in con.execute(
                "SELECT table_name, estimated_size FROM duckdb_tables()"
            ).fetchall()
        }
    finally:
        con.close()
    return Publisher(LocalObjectStore(store_root)).publish(snap, tables)


@contextmanager
def serving_client(
    store_root: Path, data_dir: Path, auth_env: dict[str, str], **overrides: object
) -> Iterator[httpx.Client]:
    """The app under Uvicorn in a thread (one worker, as in production), with a
    client bound to it; it has loaded the store's current snapshot."""
    env: dict[str, object] = {
        **auth_env,
        "STORAGE_URL": store_root.resolve().as_uri(),
        "DATA_DIR": str(data_dir),
        "SNAPSHOT_POLL_SECONDS": "0.2",
        "RATE_LIMIT_REQUESTS": "1000000",
        "LOG_JSON": "false",
        **overrides,
    }
    settings = ApiSettings(**env)  # type: ignore[arg-type]
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or not thread.is_alive():
                    raise TimeoutError("the API did not load the snapshot")
                time.sleep(0.05)
            client.app = app  # type: ignore[attr-defined]  # tests read app.state
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)
