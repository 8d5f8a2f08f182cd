"""Which tables are synced and how: primary key, cursor column, soft-delete column.

The one place for per-table configuration. The five seed tables have
defaults; any other table named in TABLES_TO_SYNC is resolved against the
source: its primary key is reflected, and `updated_at` is its cursor when the
column exists (otherwise the table is fully refreshed every cycle).
`TABLE_CONFIG` (JSON) overrides any of these per table, and sets its schema
contract (etl_service.contracts) and the columns read (`include_columns` /
`exclude_columns`): a column left out is never selected from the source, so
personal data a snapshot does not need never leaves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from etl_service.contracts import CONTRACTS
from etl_service.errors import TableConfigError
from etl_service.source.records import TableShape

__all__ = [
    "SEED_TABLES",
    "TableConfigError",
    "TableSpec",
    "resolve_spec",
    "select_columns",
    "table_specs",
]

DEFAULT_CURSOR = "updated_at"


@dataclass(frozen=True)
class TableSpec:
    name: str
    # None: reflect the source's primary key.
    primary_key: tuple[str, ...] | None = None
    # None: no cursor, so the table is fully refreshed every cycle.
    cursor_column: str | None = DEFAULT_CURSOR
    # A boolean (true = deleted) or nullable timestamp (set = deleted) column.
    soft_delete_column: str | None = None
    # What a changed source column set or type does (etl_service.contracts).
    schema_contract: str = "evolve"
    # Integer cursors: the next delta starts this many values below the
    # largest one seen, so rows whose values were taken before a commit that
    # came later are read again (date/time cursors use SYNC_LOOKBACK_SECONDS;
    # SQL Server rowversions are bounded by MIN_ACTIVE_ROWVERSION() instead).
    cursor_lookback: int = 0
    # The source columns read: only these (None: all), minus the excluded ones.
    include_columns: tuple[str, ...] | None = None
    exclude_columns: tuple[str, ...] = ()

    @property
    def incremental(self) -> bool:
        return self.cursor_column is not None


SEED_TABLES: dict[str, TableSpec] = {
    name: TableSpec(name, primary_key=("id",))
    for name in ("inventory", "products", "orders", "transactions", "customers")
}

_OVERRIDABLE = {
    "primary_key",
    "cursor_column",
    "soft_delete_column",
    "schema_contract",
    "cursor_lookback",
    "include_columns",
    "exclude_columns",
}


def _override(spec: TableSpec, config: Mapping[str, Any]) -> TableSpec:
    unknown = set(config) - _OVERRIDABLE
    if unknown:
        raise TableConfigError(
            f"TABLE_CONFIG[{spec.name!r}]: unknown keys {sorted(unknown)}"
            f" (allowed: {sorted(_OVERRIDABLE)})"
        )
    changes: dict[str, Any] = dict(config)
    if "schema_contract" in changes and changes["schema_contract"] not in CONTRACTS:
        raise TableConfigError(
            f"TABLE_CONFIG[{spec.name!r}]: schema_contract must be one of {list(CONTRACTS)}"
            f" (got {changes['schema_contract']!r})"
        )
    lookback = changes.get("cursor_lookback", 0)
    if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 0:
        raise TableConfigError(
            f"TABLE_CONFIG[{spec.name!r}]: cursor_lookback must be a whole number >= 0"
        )
    for key in ("include_columns", "exclude_columns"):
        if key not in changes or (key == "include_columns" and changes[key] is None):
            continue
        value = changes[key]
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise TableConfigError(f"TABLE_CONFIG[{spec.name!r}]: {key} must be a list of names")
        changes[key] = tuple(value)
    if "primary_key" in changes and changes["primary_key"] is not None:
        pk = changes["primary_key"]
        changes["primary_key"] = (pk,) if isinstance(pk, str) else tuple(pk)
    return replace(spec, **changes)


def table_specs(
    names: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> list[TableSpec]:
    """Specs for the configured tables, before source reflection."""
    overrides = {k.lower(): v for k, v in (overrides or {}).items()}
    specs = []
    for raw in names:
        name = raw.lower()
        spec = SEED_TABLES.get(name, TableSpec(name))
        if name in overrides:
            spec = _override(spec, overrides[name])
        specs.append(spec)
    return specs


def resolve_spec(
    spec: TableSpec, source_columns: Sequence[str], source_primary_key: Sequence[str]
) -> TableSpec:
    """Fill in what the source knows, and refuse what cannot work."""
    columns = set(source_columns)
    pk = spec.primary_key if spec.primary_key is not None else tuple(source_primary_key)
    cursor = spec.cursor_column
    if cursor == DEFAULT_CURSOR and cursor not in columns and spec.name not in SEED_TABLES:
        cursor = None  # no cursor: full refresh every cycle
    resolved = replace(spec, primary_key=pk, cursor_column=cursor)
    for what, col in (("cursor", cursor), ("soft-delete", spec.soft_delete_column)):
        if col is not None and col not in columns:
            raise TableConfigError(f"table {spec.name!r}: {what} column {col!r} does not exist")
    missing = [c for c in pk if c not in columns]
    if missing:
        raise TableConfigError(f"table {spec.name!r}: primary-key columns {missing} do not exist")
    if resolved.incremental and not pk:
        raise TableConfigError(
            f"table {spec.name!r} has no primary key, so it cannot be synced incrementally"
            " (changed rows could not be merged). Add a primary key in the source, name one"
            ' in TABLE_CONFIG ({"primary_key": [...]}), or set "cursor_column": null there'
            " to fully refresh it every cycle."
        )
    return resolved


def select_columns(spec: TableSpec, shape: TableShape) -> TableShape:
    """The source shape limited to the table's include/exclude lists.

    A listed column the source does not have is an error (a typo in an
    exclusion must not let the column through), and so is leaving out a
    primary-key, cursor or soft-delete column the sync needs."""
    if spec.include_columns is None and not spec.exclude_columns:
        return shape
    names = {c.name.lower() for c in shape.columns}
    listed = [*(spec.include_columns or ()), *spec.exclude_columns]
    unknown = sorted(c for c in listed if c.lower() not in names)
    if unknown:
        raise TableConfigError(
            f"table {spec.name!r}: include/exclude_columns name columns the source"
            f" does not have: {unknown}"
        )
    included = {c.lower() for c in spec.include_columns} if spec.include_columns else names
    kept = included - {c.lower() for c in spec.exclude_columns}
    needed = [
        *(spec.primary_key or shape.primary_key),
        *([spec.cursor_column] if spec.cursor_column in shape.names else []),
        *([spec.soft_delete_column] if spec.soft_delete_column else []),
    ]
    dropped = sorted(c for c in needed if c.lower() not in kept)
    if dropped:
        raise TableConfigError(
            f"table {spec.name!r}: the sync needs columns {dropped} (primary key, cursor or"
            " soft delete); keep them in include_columns and out of exclude_columns"
        )
    return TableShape(tuple(c for c in shape.columns if c.name.lower() in kept), shape.primary_key)
