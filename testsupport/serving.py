"""The data of the serving tests (encodings, cache, metrics, concurrency).

`build_database` writes a DuckDB file with a small `inventory` and a
`customers` table holding the awkward types (decimals, HUGEINT, UBIGINT,
BIGINT past 2**53, TIMESTAMPTZ, UUID, NULLs, unicode, control characters,
lists, blobs); `testsupport.publishing.publish_file` puts it in the store as
the next version, and `testsupport.api_app.make_app_client(serving_env(...))`
serves it.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["INVENTORY_ONLY", "build_database", "p95_of_simple_queries", "published_inventory_env"]

# A whitelist whose one app reads only `inventory`.
INVENTORY_ONLY: dict[str, Any] = {
    "default_policy": "default",
    "unknown_apps": "refuse",
    "policies": {"default": {"tables": ["inventory"]}},
    "apps": {"demo-app": "default"},
}

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


def published_inventory_env(
    root: Path, issuer: Any, whitelist: dict[str, Any] = INVENTORY_ONLY, **settings: str
) -> dict[str, str]:
    """Publish a 3,000-row `inventory` to a folder store under `root` and return
    the environment of an API serving it (Redis with a fresh key prefix, rate
    limits out of the way, JSON logs), plus `settings`."""
    from testsupport.publishing import publish_file

    db = build_database(root / "source.db", inventory_rows=3000)
    publish_file(db, root / "store", root / "work")
    (root / "whitelist.json").write_text(json.dumps(whitelist))
    return {
        **issuer.settings_env(),
        "STORAGE_URL": (root / "store").as_uri(),
        "DATA_DIR": str(root / "var"),
        "QUERY_WHITELIST_PATH": str(root / "whitelist.json"),
        "REDIS_URL": os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "RATE_LIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "RATE_LIMIT_REQUESTS": "100000",
        "LOG_JSON": "true",
        **settings,
    }


def p95_of_simple_queries(url: str, headers: dict[str, str], tries: int = 20) -> float:
    """A user's p95 latency over `tries` simple count(*) queries (each a new text,
    each answered 200): the 19th slowest of 20 ("inclusive"; the default method
    extrapolates to nearly the maximum, one cold request on a busy machine)."""
    import httpx

    latencies = []
    for n in range(tries):
        started = time.monotonic()
        r = httpx.post(
            url + "/query",
            json={"sql": f"SELECT count(*) AS n FROM inventory WHERE id > {n}"},
            headers=headers,
            timeout=60,
        )
        latencies.append(time.monotonic() - started)
        assert r.status_code == 200, r.text
    return statistics.quantiles(latencies, n=20, method="inclusive")[-1]
