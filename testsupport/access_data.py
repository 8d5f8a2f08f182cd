"""A shop snapshot with row filters and column policies, and its oracle.

`publish_shop(store_root)` publishes random (seeded) customers, orders and
products, plus three models: a view and a rollup table built on `orders`
(refused for the restricted policies) and a view on `products` (served).
`SHOP_WHITELIST` gives the app `shop-app` the `shop` policy: a customer sees
only their orders and their own customer row, customers' `api_secret` and
orders' `margin` are hidden, `email` is a keyed hash and `note` is NULL.

`Oracle(customer_id)` is the independent expectation: a DuckDB database whose
tables hold exactly what that customer may see, computed by hand in Python
(the filter written out, the hash computed with hashlib), never by the API's
rewrite. Running the same SQL there gives the answer the API must give.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import hmac
import json
import random
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from analytics_shared.manifest import ColumnSchema, Manifest, ModelInfo
from analytics_shared.object_store import LocalObjectStore
from etl_service.export import export_snapshot
from etl_service.publisher import Publisher
from testsupport.publishing import table_infos

__all__ = [
    "CLAIM",
    "MASK_SECRET",
    "SHOP_WHITELIST",
    "Oracle",
    "arrow_rows",
    "publish_shop",
    "shop_env",
    "shop_rows",
]

CLAIM = "https://acme.example/customer_id"
MASK_SECRET = "test-column-mask-secret-0123456789"
REGIONS = ["north", "south", "east", "west"]
STATUSES = ["new", "paid", "shipped", "cancelled"]

SHOP_WHITELIST: dict[str, Any] = {
    "unknown_apps": "refuse",
    "default_policy": "staff",
    "policies": {
        "staff": {"tables": ["*"], "named_queries": ["*"]},
        "shop": {
            "tables": [
                "customers",
                "orders",
                "products",
                "v_customer_totals",
                "order_status_daily",
                "v_product_prices",
            ],
            "named_queries": ["*"],
            "allowed_table_functions": ["range", "unnest", "generate_series"],
            "row_filters": {
                "orders": f"customer_id = claim('{CLAIM}')",
                "customers": f"id = claim('{CLAIM}')",
            },
            "column_policies": {
                "customers": {
                    "allowed_columns": ["id", "name", "email", "region"],
                    "masked_columns": {"email": "hash"},
                },
                "orders": {
                    "allowed_columns": [
                        "id",
                        "customer_id",
                        "status",
                        "total_amount",
                        "created_at",
                        "note",
                    ],
                    "masked_columns": {"note": "null"},
                },
            },
        },
        "regional": {
            "tables": ["orders", "customers"],
            "row_filters": {
                "orders": "customer_id IN"
                " (SELECT id FROM customers WHERE region = claim('region'))",
            },
            "column_policies": {"customers": {"allowed_columns": ["id", "region"]}},
        },
        # A filter reading a table the policy does not restrict (products).
        "by_product": {
            "tables": ["orders", "products"],
            "allowed_table_functions": ["range"],
            "row_filters": {
                "orders": "customer_id IN (SELECT id FROM products WHERE name = claim('product'))"
            },
        },
    },
    "apps": {
        "staff-app": "staff",
        "shop-app": "shop",
        "regional-app": "regional",
        "product-app": "by_product",
    },
    "named_queries": {
        "my_orders": {
            "description": "The caller's orders (the customer id comes from the token).",
            "sql": "SELECT id, status, total_amount FROM orders"
            " WHERE customer_id = $customer_id ORDER BY id",
            "parameters": {"customer_id": {"type": "integer", "from_claim": CLAIM}},
        },
        "orders_of": {
            "description": "Orders of a customer the caller names (row filters still apply).",
            "sql": "SELECT id, customer_id, total_amount FROM orders"
            " WHERE customer_id = $customer_id ORDER BY id",
            "parameters": {"customer_id": {"type": "integer"}},
        },
        "order_count": {"sql": "SELECT count(*) AS n FROM orders"},
        "customer_totals": {"sql": "SELECT * FROM v_customer_totals ORDER BY customer_id"},
    },
}


def shop_env(root: Path, issuer: Any) -> dict[str, str]:
    """API settings serving a freshly published shop under `root` with SHOP_WHITELIST."""
    publish_shop(root / "store")
    whitelist = root / "whitelist.json"
    whitelist.write_text(json.dumps(SHOP_WHITELIST))
    return {
        **issuer.settings_env(),
        "STORAGE_URL": (root / "store").as_uri(),
        "DATA_DIR": str(root / "var"),
        "QUERY_WHITELIST_PATH": str(whitelist),
        "RATE_LIMIT_REQUESTS": "1000000",
        "COLUMN_MASK_SECRET": MASK_SECRET,
        "LOG_JSON": "false",
    }


def shop_rows(seed: int = 12) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    customers = [
        {
            "id": i,
            "name": f"{rng.choice(['Ada', 'Bo', 'Cy', 'Di', 'Ed'])} {rng.randrange(10_000)}",
            "email": f"user{rng.randrange(10**6)}@example.com",
            "api_secret": f"sk_{rng.getrandbits(64):016x}",
            "region": rng.choice(REGIONS),
        }
        for i in range(1, 41)
    ]
    start = dt.datetime(2024, 1, 1)
    orders = []
    for i in range(1, 601):
        orders.append(
            {
                "id": i,
                "customer_id": rng.choice([c["id"] for c in customers]),
                "status": rng.choice(STATUSES),
                "total_amount": decimal.Decimal(rng.randrange(100, 500_000)) / 100,
                "created_at": start + dt.timedelta(minutes=rng.randrange(500_000)),
                # Some notes are numbers, some are not: casts fail on the others.
                "note": str(rng.randrange(1000)) if rng.random() < 0.5 else f"gift-{i}",
                "margin": rng.random(),
            }
        )
    products = [
        {"id": i, "name": f"product {rng.randrange(10**5)}", "unit_price": rng.random() * 100}
        for i in range(1, 31)
    ]
    return {"customers": customers, "orders": orders, "products": products}


_TYPES = {
    "customers": "id INTEGER, name VARCHAR, email VARCHAR, api_secret VARCHAR, region VARCHAR",
    "orders": "id INTEGER, customer_id INTEGER, status VARCHAR, total_amount DECIMAL(12,2),"
    " created_at TIMESTAMP, note VARCHAR, margin DOUBLE",
    "products": "id INTEGER, name VARCHAR, unit_price DOUBLE",
}
_MODELS = {
    "v_customer_totals": (
        "view",
        "SELECT customer_id, count(*) AS orders, sum(total_amount) AS total"
        " FROM orders GROUP BY customer_id",
        ["orders"],
    ),
    "order_status_daily": (
        "table",
        "SELECT CAST(created_at AS DATE) AS day, status, count(*) AS orders"
        " FROM orders GROUP BY ALL",
        ["orders"],
    ),
    "v_product_prices": ("view", "SELECT id, name, unit_price FROM products", ["products"]),
}


def _load(con: duckdb.DuckDBPyConnection, name: str, rows: list[dict[str, Any]]) -> None:
    con.execute(f"CREATE TABLE {name} ({_TYPES[name]})")
    columns = list(rows[0])
    marks = ", ".join("?" for _ in columns)
    con.executemany(f"INSERT INTO {name} VALUES ({marks})", [list(r.values()) for r in rows])


def publish_shop(store_root: Path, seed: int = 12) -> Manifest:
    work = store_root.parent / "shop-build"
    work.mkdir(parents=True, exist_ok=True)
    db = work / "shop.duckdb"
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    try:
        for name, rows in shop_rows(seed).items():
            _load(con, name, rows)
        tables = table_infos(con)
        models = {}
        for name, (kind, sql, deps) in _MODELS.items():
            con.execute(f"CREATE {'VIEW' if kind == 'view' else 'TABLE'} {name} AS {sql}")
            columns = con.execute(f"DESCRIBE {name}").fetchall()
            models[name] = ModelInfo(
                kind=kind,
                sql_sha256=hashlib.sha256(sql.encode()).hexdigest(),
                depends_on=deps,
                columns=[ColumnSchema(name=c[0], type=c[1]) for c in columns],
            )
            tables.pop(name, None)
        snapshot = export_snapshot(con, work / "shop-snapshot.db")
        return Publisher(LocalObjectStore(store_root)).publish(snapshot, tables, models=models)
    finally:
        con.close()


def masked_hash(value: str | None, secret: str = MASK_SECRET) -> str | None:
    """The keyed hash as documented, computed without the API's code."""
    if value is None:
        return None
    key = secret.encode()
    inner = hmac.new(key, b"column-mask inner", hashlib.sha256).hexdigest()
    outer = hmac.new(key, b"column-mask outer", hashlib.sha256).hexdigest()
    digest = hashlib.sha256((inner + value).encode()).hexdigest()
    return hashlib.sha256((outer + digest).encode()).hexdigest()


class Oracle:
    """What the `shop` policy lets `customer_id` see, as plain DuckDB tables."""

    def __init__(self, customer_id: int, seed: int = 12) -> None:
        rows = shop_rows(seed)
        self.customer_id = customer_id
        self.con = duckdb.connect()
        customers = [
            {
                "id": c["id"],
                "name": c["name"],
                "email": masked_hash(c["email"]),
                "region": c["region"],
            }
            for c in rows["customers"]
            if c["id"] == customer_id
        ]
        orders = [
            {k: (None if k == "note" else v) for k, v in o.items() if k != "margin"}
            for o in rows["orders"]
            if o["customer_id"] == customer_id
        ]
        self.con.execute(
            "CREATE TABLE customers (id INTEGER, name VARCHAR, email VARCHAR, region VARCHAR)"
        )
        self.con.execute(
            "CREATE TABLE orders (id INTEGER, customer_id INTEGER, status VARCHAR,"
            " total_amount DECIMAL(12,2), created_at TIMESTAMP, note VARCHAR)"
        )
        _insert(self.con, "customers", customers)
        _insert(self.con, "orders", orders)
        _load(self.con, "products", rows["products"])
        self.con.execute(f"CREATE VIEW v_product_prices AS {_MODELS['v_product_prices'][1]}")
        self.raw = rows

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        relation = self.con.sql(sql, params=params) if params else self.con.sql(sql)
        return relation.to_arrow_table().to_pylist()


def _insert(con: duckdb.DuckDBPyConnection, name: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        marks = ", ".join("?" for _ in rows[0])
        con.executemany(f"INSERT INTO {name} VALUES ({marks})", [list(r.values()) for r in rows])


def arrow_rows(body: bytes) -> list[dict[str, Any]]:
    """Rows of an Arrow IPC stream answer (format=arrow)."""
    return pa.ipc.open_stream(body).read_all().to_pylist()
