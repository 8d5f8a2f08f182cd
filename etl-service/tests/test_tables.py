"""Table configuration: seed defaults, TABLE_CONFIG overrides, resolution against the source."""

from __future__ import annotations

import pytest

from analytics_shared.errors import ConfigurationError
from etl_service.tables import TableConfigError, TableSpec, resolve_spec, table_specs


def test_seed_tables_default_to_id_and_updated_at_others_reflect() -> None:
    orders, custom = table_specs(["Orders", "ledger"])
    assert orders == TableSpec("orders", primary_key=("id",), cursor_column="updated_at")
    assert custom == TableSpec("ledger", primary_key=None, cursor_column="updated_at")


def test_overrides_replace_the_defaults() -> None:
    [spec] = table_specs(
        ["orders"],
        {"ORDERS": {"primary_key": "order_no", "cursor_column": None, "soft_delete_column": "d"}},
    )
    assert spec == TableSpec("orders", ("order_no",), None, "d")
    assert not spec.incremental


def test_unknown_override_keys_are_refused() -> None:
    with pytest.raises(TableConfigError, match="unknown keys \\['cursor'\\]"):
        table_specs(["orders"], {"orders": {"cursor": "x"}})


def test_resolution_takes_the_source_primary_key() -> None:
    spec = resolve_spec(TableSpec("ledger"), ["k", "updated_at"], ["k"])
    assert spec.primary_key == ("k",) and spec.cursor_column == "updated_at"


def test_a_table_without_updated_at_is_fully_refreshed() -> None:
    spec = resolve_spec(TableSpec("rates"), ["code", "rate"], [])
    assert spec.cursor_column is None and spec.primary_key == ()
    # A seed table keeps its cursor, so a missing column is an error there.
    with pytest.raises(TableConfigError, match="cursor column 'updated_at' does not exist"):
        resolve_spec(table_specs(["orders"])[0], ["id"], ["id"])


def test_missing_columns_and_keys_are_refused() -> None:
    with pytest.raises(TableConfigError, match="soft-delete column 'gone'"):
        resolve_spec(TableSpec("t", soft_delete_column="gone"), ["id", "updated_at"], ["id"])
    with pytest.raises(TableConfigError, match="primary-key columns \\['nope'\\]"):
        resolve_spec(TableSpec("t", primary_key=("nope",)), ["id", "updated_at"], ["id"])
    with pytest.raises(TableConfigError, match="has no primary key") as err:
        resolve_spec(TableSpec("t"), ["v", "updated_at"], [])
    # Still a ValueError (the CLI's exit code 2) and a configuration error by type.
    assert isinstance(err.value, ValueError) and isinstance(err.value, ConfigurationError)


def test_contracts_and_integer_lookback_are_checked() -> None:
    [spec] = table_specs(
        ["orders"], {"orders": {"schema_contract": "freeze", "cursor_lookback": 500}}
    )
    assert spec.schema_contract == "freeze" and spec.cursor_lookback == 500
    with pytest.raises(TableConfigError, match="schema_contract must be one of"):
        table_specs(["orders"], {"orders": {"schema_contract": "strict"}})
    for bad in (-1, 1.5, "10", True):
        with pytest.raises(TableConfigError, match="cursor_lookback must be a whole number"):
            table_specs(["orders"], {"orders": {"cursor_lookback": bad}})
