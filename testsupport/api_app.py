"""The one way tests start the API in-process (like Datasette's `make_app_client`).

`make_app_client(env)` builds the real app with `create_app(ApiSettings(**env))`,
serves it with Uvicorn on a loopback port in a background thread (lifespan
included, one worker as in production) and hands back an httpx client bound
to it, once `/health` says a snapshot is in service (unless told not to wait).
`client.app` is the app, for tests that look at its state.

`api_env` and `serving_env` are the two settings presets (a tiny warehouse of
four seed tables with a whitelist; a store the test publishes into itself).
Real Gunicorn is `testsupport.api_server.ApiServer`; test snapshots are
published with `testsupport.publishing`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
import uvicorn

from analytics_shared.manifest import Manifest
from analytics_shared.object_store import LocalObjectStore
from testsupport.ports import free_port
from testsupport.publishing import publish_database

__all__ = [
    "api_env",
    "make_app_client",
    "publish_test_snapshot",
    "serving_env",
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
    """The four seed tables with `rows` rows, published into a folder store."""
    work = store_root.parent / "snapshot-build"
    work.mkdir(parents=True, exist_ok=True)
    db = work / "tiny.duckdb"
    db.unlink(missing_ok=True)  # each call publishes a new version from scratch
    con = duckdb.connect(str(db))
    try:
        for ddl in _TABLES.values():
            con.execute(ddl.format(rows=rows))
        return publish_database(con, LocalObjectStore(store_root), work)
    finally:
        con.close()


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


def serving_env(
    store_root: Path, data_dir: Path, auth_env: dict[str, str], **overrides: object
) -> dict[str, object]:
    """Settings for an API over the store at `store_root` (the test publishes into it).

    The seed tables may be read, `customers` included (the serving tests'
    awkward types live there; the bundled whitelist serves it to no one)."""
    tables = ["inventory", "products", "orders", "transactions", "customers"]
    whitelist = write_whitelist(
        store_root.parent / "serving-whitelist.json",
        {"policies": {"default": {"tables": tables, "named_queries": ["*"]}}},
    )
    return {
        **auth_env,
        "STORAGE_URL": store_root.resolve().as_uri(),
        "DATA_DIR": str(data_dir),
        "QUERY_WHITELIST_PATH": str(whitelist),
        "SNAPSHOT_POLL_SECONDS": "0.2",
        "RATE_LIMIT_REQUESTS": "1000000",
        "LOG_JSON": "false",
        **overrides,
    }


@contextmanager
def make_app_client(
    env: Mapping[str, object], *, wait_for_data: bool = True
) -> Iterator[httpx.Client]:
    """The app under Uvicorn in a daemon thread, with a client bound to it."""
    from api_service.main import create_app
    from api_service.settings import ApiSettings

    app = create_app(ApiSettings(**env))  # type: ignore[arg-type]
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 30
            while not _ready(server, client, wait_for_data):
                if time.monotonic() > deadline or not thread.is_alive():
                    raise TimeoutError("the in-process API did not start (or load a snapshot)")
                time.sleep(0.02)
            client.app = app  # type: ignore[attr-defined] - tests reach app.state through it
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _ready(server: uvicorn.Server, client: httpx.Client, wait_for_data: bool) -> bool:
    if not server.started:
        return False
    if not wait_for_data:
        return True
    try:
        return client.get("/health").status_code == 200
    except httpx.TransportError:
        return False
