"""etl-service/scripts/setup_database.sql matches the demo source's tables, and the
compose seeder's sqlcmd-style runner can split and fill it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from etl_service.demo_source import DEMO_TABLE_NAMES, demo_metadata

ROOT = Path(__file__).resolve().parents[2]
SQL = ROOT / "etl-service" / "scripts" / "setup_database.sql"
VARIABLES = {"DATABASE_NAME": "analytics_source", "ETL_LOGIN": "etl", "ETL_PASSWORD": "Pw-1x"}


@pytest.fixture(scope="module")
def seeder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compose_mssql_seed", ROOT / "scripts" / "compose" / "mssql_seed.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def created_columns(sql: str, table: str) -> list[str]:
    match = re.search(rf"CREATE TABLE dbo\.{table} \((.*?)\n    \);", sql, re.S)
    assert match, f"no CREATE TABLE dbo.{table}"
    return [line.strip().split()[0] for line in match.group(1).strip().splitlines()]


@pytest.mark.parametrize("table", DEMO_TABLE_NAMES)
def test_tables_have_the_demo_sources_columns(table: str) -> None:
    sql = SQL.read_text(encoding="utf-8")
    expected = [column.name for column in demo_metadata().tables[table].columns]
    assert created_columns(sql, table) == expected
    assert re.search(r"updated_at DATETIME2\(7\) NOT NULL", sql)
    assert f"(N'{table}')" in sql, f"{table} is not in the updated_at table list"
    assert f"GRANT SELECT ON OBJECT::dbo.{table} TO" in sql


def test_snapshot_isolation_and_read_only_login() -> None:
    sql = SQL.read_text(encoding="utf-8")
    assert "SET ALLOW_SNAPSHOT_ISOLATION ON" in sql
    assert "CREATE LOGIN [$(ETL_LOGIN)]" in sql
    assert re.search(r"DENY INSERT, UPDATE, DELETE, ALTER, EXECUTE ON SCHEMA::dbo", sql)
    assert "db_datawriter" not in sql and "db_owner" not in sql.split("--", 1)[0]


def test_runner_splits_batches_and_fills_variables(seeder: ModuleType) -> None:
    batches = list(seeder.sqlcmd_batches(SQL.read_text(encoding="utf-8"), VARIABLES))
    assert len(batches) > 10
    joined = "\n".join(batches)
    assert "$(" not in joined
    assert "[analytics_source]" in joined and "N'Pw-1x'" in joined
    assert not any(re.match(r"^\s*(GO|:)", line) for b in batches for line in b.splitlines())


def test_runner_refuses_missing_variables(seeder: ModuleType) -> None:
    with pytest.raises(SystemExit, match="ETL_PASSWORD"):
        list(
            seeder.sqlcmd_batches(
                SQL.read_text(encoding="utf-8"), {"DATABASE_NAME": "x", "ETL_LOGIN": "y"}
            )
        )
