"""The API in-process over a small published snapshot, for fast HTTP-level tests.

`publish_test_snapshot` writes a tiny DuckDB snapshot and its manifest into a
local object store (the same layout the ETL publishes); `api_client` builds
the real app with `create_app`, serves it with Uvicorn on a loopback port in a
background thread (lifespan included) and hands back an httpx client, with the
snapshot already loaded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import httpx
import uvicorn

from analytics_shared.manifest import (
    MANIFEST_KEY,
    ColumnSchema,
    Manifest,
    TableInfo,
    new_version_id,
    sha256_file,
)
from analytics_shared.object_store import LocalObjectStore
from testsupport.ports import free_port

__all__ = [
    "api_client",
    "api_env",
    "publish_test_snapshot",
    "serve_in_thread",
    "write_whitelist",
]

_TABLES = {
    "inventory": """CREATE TABLE inventory AS
        SELECT i AS id, i % 20 AS product_id, 'wh-' || (i % 3) AS warehouse,
               (i * 7) % 50 AS quantity
        FROM range(1, {rows} + 1) t(i)""",
    "products": """CREATE TABLE products AS
        SELECT i AS id, 'product ' || i AS name, CAST(i * 1.25 AS DECIMAL(10,2)) AS unit_price
        FROM range(1, 21) t(i)""",
    "orders": """CREATE TABLE orders AS
        SELECT i AS id, ['new', 'paid', 'shipped'][1 + i % 3] AS status,
               CAST(i * 10.5 AS DECIMAL(12,2)) AS total_amount,
               TIMESTAMP '2024-01-01' + INTERVAL (i) DAY AS created_at
        FROM range(1, {rows} + 1) t(i)""",
    "customers": """CREATE TABLE customers AS
        SELECT i AS id, 'customer' || i || '@example.com' AS email, 'secret-' || i AS api_secret
        FROM range(1, 11) t(i)""",
}


def publish_test_snapshot(store_root: Path, rows: int = 200) -> Manifest:
    store = LocalObjectStore(store_root)
    work = store_root.parent / "snapshot-build.db"
    work.unlink(missing_ok=True)
    con = duckdb.connect(str(work))
    tables: dict[str, TableInfo] = {}
    for name, ddl in _TABLES.items():
        con.execute(ddl.format(rows=rows))
        count = con.execute(f"SELECT count(*) FROM {name}").fetchone()
        columns = con.execute(f"DESCRIBE {name}").fetchall()
        tables[name] = TableInfo(
            row_count=int(count[0]) if count else 0,
            columns=[ColumnSchema(name=c[0], type=c[1]) for c in columns],
        )
    con.execute("CHECKPOINT")
    con.close()
    version = new_version_id()
    key = f"history/analytics_{version}.db"
    store.put_file(key, work)
    manifest = Manifest(
        version=version,
        created_at=datetime.now(UTC),
        snapshot_key=key,
        sha256=sha256_file(work),
        size=work.stat().st_size,
        tables=tables,
    )
    store.put_bytes(MANIFEST_KEY, manifest.to_json())
    work.unlink()
    return manifest


def write_whitelist(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


def api_env(root: Path, issuer: Any, whitelist: dict[str, Any], **extra: str) -> dict[str, str]:
    """Settings for an API over a fresh test snapshot under `root`."""
    publish_test_snapshot(root / "store")
    path = write_whitelist(root / "whitelist.json", whitelist)
    return {
        **issuer.settings_env(),
        "STORAGE_URL": (root / "store").as_uri(),
        "DATA_DIR": str(root / "var"),
        "QUERY_WHITELIST_PATH": str(path),
        "RATE_LIMIT_REQUESTS": "100000",
        **extra,
    }


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Uvicorn on 127.0.0.1 in a daemon thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("in-process API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def api_client(env: dict[str, str], *, load_snapshot: bool = True) -> Iterator[httpx.Client]:
    from api_service.main import create_app
    from api_service.settings import ApiSettings

    app = create_app(ApiSettings(**env))  # type: ignore[arg-type]
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        if load_snapshot:
            app.state.snapshots.refresh()
        client.app = app  # type: ignore[attr-defined] - tests reach app.state through it
        yield client
