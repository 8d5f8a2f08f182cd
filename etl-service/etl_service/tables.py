"""Which tables are synced and how: primary key, cursor column, soft-delete column.

One place for per-table configuration. The five seed tables have defaults;
any other table named in TABLES_TO_SYNC gets `id` / `updated_at`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SEED_TABLES", "TableSpec", "table_specs"]


@dataclass(frozen=True)
class TableSpec:
    name: str
    primary_key: tuple[str, ...] = ("id",)
    cursor_column: str | None = "updated_at"
    soft_delete_column: str | None = None


SEED_TABLES: dict[str, TableSpec] = {
    name: TableSpec(name)
    for name in ("inventory", "products", "orders", "transactions", "customers")
}


def table_specs(names: list[str]) -> list[TableSpec]:
    return [SEED_TABLES.get(name.lower(), TableSpec(name.lower())) for name in names]
