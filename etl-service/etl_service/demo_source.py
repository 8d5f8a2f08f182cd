"""A demo source database with the five seed tables, and a writer that keeps
changing rows. Works on any SQLAlchemy URL: SQLite for `make demo`,
PostgreSQL in the tests (it stands in for SQL Server there).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

__all__ = ["DEMO_TABLE_NAMES", "create_demo_source", "demo_metadata", "mutate_demo_rows"]

DEMO_TABLE_NAMES = ("products", "inventory", "customers", "orders", "transactions")

WAREHOUSES = ("AMS-1", "BER-2", "NYC-1", "SFO-3", "SIN-1")
CATEGORIES = ("electronics", "grocery", "apparel", "home", "toys", "sports")
COUNTRIES = ("NL", "DE", "US", "GB", "FR", "SG", "BR", "JP")
ORDER_STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled")
PAYMENT_METHODS = ("card", "paypal", "bank_transfer", "gift_card")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False, index=True),
    ]


def demo_metadata() -> sa.MetaData:
    meta = sa.MetaData()
    sa.Table(
        "products",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sku", sa.String(32), nullable=False, unique=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("category", sa.String(50), nullable=False),
        sa.Column("unit_price", sa.Numeric(12, 2), nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        *_timestamps(),
    )
    sa.Table(
        "inventory",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("product_id", sa.Integer, nullable=False),
        sa.Column("warehouse", sa.String(16), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("reorder_level", sa.Integer, nullable=False),
        *_timestamps(),
    )
    sa.Table(
        "customers",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("full_name", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("segment", sa.String(20), nullable=False),
        *_timestamps(),
    )
    sa.Table(
        "orders",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("customer_id", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total_amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        *_timestamps(),
    )
    sa.Table(
        "transactions",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("order_id", sa.Integer, nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("payment_method", sa.String(20), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        *_timestamps(),
    )
    return meta


def _money(rng: random.Random, low: float, high: float) -> Decimal:
    return Decimal(f"{rng.uniform(low, high):.2f}")


def create_demo_source(
    url: str,
    *,
    scale: int = 1,
    seed: int = 42,
    schema: str | None = None,
) -> sa.Engine:
    """(Re)create the five seed tables and fill them; returns the engine."""
    engine = sa.create_engine(url)
    meta = demo_metadata()
    if schema:
        for table in meta.tables.values():
            table.schema = schema
    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)

    def stamp() -> dict[str, datetime]:
        created = base + timedelta(minutes=rng.randrange(0, 60 * 24 * 300))
        return {
            "created_at": created,
            "updated_at": created + timedelta(seconds=rng.randrange(0, 86_400)),
        }

    n_products, n_customers = 200 * scale, 500 * scale
    n_inventory, n_orders, n_tx = 1000 * scale, 2000 * scale, 2500 * scale
    rows: dict[str, list[dict[str, object]]] = {
        "products": [
            {
                "id": i,
                "sku": f"SKU-{i:06d}",
                "name": f"{rng.choice(CATEGORIES).title()} item {i}",
                "category": rng.choice(CATEGORIES),
                "unit_price": _money(rng, 1, 500),
                "active": rng.random() > 0.1,
                **stamp(),
            }
            for i in range(1, n_products + 1)
        ],
        "inventory": [
            {
                "id": i,
                "product_id": rng.randint(1, n_products),
                "warehouse": rng.choice(WAREHOUSES),
                "quantity": rng.randint(0, 500),
                "reorder_level": rng.choice((10, 20, 50)),
                **stamp(),
            }
            for i in range(1, n_inventory + 1)
        ],
        "customers": [
            {
                "id": i,
                "email": f"customer{i}@example.com",
                "full_name": f"Customer {i}",
                "country": rng.choice(COUNTRIES),
                "segment": rng.choice(("retail", "business", "vip")),
                **stamp(),
            }
            for i in range(1, n_customers + 1)
        ],
        "orders": [
            {
                "id": i,
                "customer_id": rng.randint(1, n_customers),
                "status": rng.choice(ORDER_STATUSES),
                "total_amount": _money(rng, 5, 2000),
                "currency": "EUR",
                **stamp(),
            }
            for i in range(1, n_orders + 1)
        ],
        "transactions": [
            {
                "id": i,
                "order_id": rng.randint(1, n_orders),
                "amount": _money(rng, 5, 2000),
                "payment_method": rng.choice(PAYMENT_METHODS),
                "status": rng.choice(("authorized", "captured", "refunded")),
                **stamp(),
            }
            for i in range(1, n_tx + 1)
        ],
    }
    with engine.begin() as conn:
        meta.drop_all(conn)
        meta.create_all(conn)
        for name in DEMO_TABLE_NAMES:
            conn.execute(meta.tables[f"{schema}.{name}" if schema else name].insert(), rows[name])
    return engine


def mutate_demo_rows(engine: sa.Engine, rng: random.Random, count: int = 5) -> int:
    """Change a few inventory quantities and order statuses, bumping updated_at."""
    meta = demo_metadata()
    inventory, orders = meta.tables["inventory"], meta.tables["orders"]
    now = datetime.now(UTC).replace(tzinfo=None)
    changed = 0
    with engine.begin() as conn:
        max_inv = conn.execute(sa.select(sa.func.max(inventory.c.id))).scalar() or 0
        max_ord = conn.execute(sa.select(sa.func.max(orders.c.id))).scalar() or 0
        for _ in range(count):
            if max_inv:
                changed += conn.execute(
                    inventory.update()
                    .where(inventory.c.id == rng.randint(1, max_inv))
                    .values(quantity=rng.randint(0, 500), updated_at=now)
                ).rowcount
            if max_ord:
                changed += conn.execute(
                    orders.update()
                    .where(orders.c.id == rng.randint(1, max_ord))
                    .values(status=rng.choice(ORDER_STATUSES), updated_at=now)
                ).rowcount
    return changed
