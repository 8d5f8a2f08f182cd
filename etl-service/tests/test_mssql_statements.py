"""Every T-SQL text the ETL sends to SQL Server, parsed by sqlglot's `tsql` dialect.

No SQL Server runs on these machines, so a syntax error in what the SQL
Server dialect writes (or in setup_database.sql) would otherwise reach a
customer first. The statements are listed for DBAs in docs/deployment-guide.md
("Statements the ETL sends to SQL Server").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlglot
from sqlalchemy.dialects import mssql
from sqlglot import expressions as exp
from sqlglot.errors import ErrorLevel, ParseError

from etl_service.source import ColumnInfo, Source
from etl_service.source.dialects import MssqlDialect, sql_literal

SETUP_SCRIPT = Path(__file__).parents[1] / "scripts" / "setup_database.sql"

NAIVE = ColumnInfo("updated_at", "TIMESTAMP", True, False)
AWARE = ColumnInfo("changed_at", "TIMESTAMPTZ", True, True)
PRICE = ColumnInfo("unit_price", "DECIMAL(12,2)", False, False, "CAST({} AS varchar(48))")
MONEY = ColumnInfo("balance", "DECIMAL(19,4)", False, False, "CONVERT(varchar(32), {}, 2)")
ID = ColumnInfo("id", "INTEGER", False, False)
ROWVERSION = ColumnInfo("row_ver", "BIGINT", False, False, "CAST({} AS bigint)", True)


def parse_tsql(sql: str) -> list[exp.Expression]:
    """Strict: a syntax error raises, and nothing may fall back to an unparsed Command."""
    statements = [s for s in sqlglot.parse(sql, read="tsql", error_level=ErrorLevel.RAISE) if s]
    unparsed = [s.sql() for s in statements if isinstance(s, exp.Command)]
    assert not unparsed, f"sqlglot could not check: {unparsed}"
    return statements


def generated_statements() -> dict[str, str]:
    """What the SQL Server dialect and the reader write, with realistic inputs."""
    dialect = MssqlDialect()
    source = Source("mssql+pymssql://etl:secret@sqlserver.invalid:1433/analytics")
    watermark = sql_literal("2026-03-01 12:00:00.1234567")
    aware_watermark = sql_literal("2026-03-01 12:00:00.1234567 +00:00")
    columns = [ID, PRICE, MONEY, NAIVE, AWARE]
    text = {
        "decimal as text": dialect.text_extract(sa.Numeric(12, 2)),
        "money as text": dialect.text_extract(mssql.MONEY()),
        "rowversion as integer": dialect.text_extract(mssql.ROWVERSION()),
    }
    assert all(text.values())
    statements = {
        "clock (UTC)": dialect.clock_sql(5, "UTC"),
        "clock (Windows zone)": dialect.clock_sql(0.25, "W. Europe Standard Time"),
        "full load": source.select_sql("inventory", columns),
        "delta, datetime2 cursor": source.select_sql(
            "inventory",
            columns,
            f"{source.quote('updated_at')} >= {dialect.lower_bound_sql(watermark, NAIVE, 60)}",
        ),
        "delta, datetimeoffset cursor": source.select_sql(
            "dbo.inventory",
            columns,
            f"{source.quote('changed_at')} >= "
            f"{dialect.lower_bound_sql(aware_watermark, AWARE, 1.5)}",
        ),
        "primary keys (reconcile)": source.select_sql("inventory", [ID]),
        "delta, rowversion cursor": source.select_sql(
            "inventory",
            [ID, ROWVERSION],
            f"{source.quote('row_ver')} >= {source.lower_bound_sql('81234', ROWVERSION, 60)}",
        ),
    }
    statements.update(
        {
            f"{name} (column)": f"SELECT {t.format('[c]')} AS [c] FROM [t]"
            for name, t in text.items()
            if t
        }
    )
    source.close()
    return statements


@pytest.mark.parametrize(("name", "sql"), sorted(generated_statements().items()))
def test_each_generated_statement_is_valid_tsql(name: str, sql: str) -> None:
    [statement] = parse_tsql(sql)
    assert isinstance(statement, exp.Select), name


def test_the_parser_would_catch_a_broken_statement() -> None:
    clock = MssqlDialect().clock_sql(5, "UTC")
    with pytest.raises(ParseError):
        parse_tsql(clock.replace("AS datetime2(7))", "AS datetime2(7)"))  # a lost parenthesis
    with pytest.raises(ParseError):
        parse_tsql("SELECT [id] FROM [inventory] WHERE [updated_at] >= DATEADD(millisecond, -5,")


# sqlglot 30.30 lacks three valid T-SQL constructs the script uses; they are
# rewritten to equivalents it knows before parsing (the rest is checked as is).
_SQLGLOT_GAPS = [
    (re.compile(r"SET (@\w+) \+= "), r"SET \1 = \1 + "),  # compound assignment
    (re.compile(r"(?m)^DENY "), "GRANT "),  # DENY has GRANT's grammar
    (re.compile(r"THROW (\d+), (@\w+), (\d+);"), r"RAISERROR(\2, 16, \3);"),
]


def setup_batches() -> list[str]:
    """setup_database.sql as sqlcmd runs it: variables substituted, split on GO."""
    text = SETUP_SCRIPT.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^:on error exit\s*$", "", text)
    variables = {
        "DATABASE_NAME": "analytics_source",
        "ETL_LOGIN": "analytics_etl",
        "ETL_PASSWORD": "Str0ng-Passw0rd",
    }
    text = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], text)
    for pattern, replacement in _SQLGLOT_GAPS:
        text = pattern.sub(replacement, text)
    return [b for b in re.split(r"(?im)^\s*GO\s*$", text) if b.strip()]


def test_setup_database_script_parses_batch_by_batch() -> None:
    batches = setup_batches()
    assert len(batches) > 10
    for batch in batches:
        try:
            sqlglot.parse(batch, read="tsql", error_level=ErrorLevel.RAISE)
        except ParseError as exc:
            pytest.fail(f"setup_database.sql: {exc}\n--- batch ---\n{batch}")
