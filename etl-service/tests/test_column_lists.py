"""TABLE_CONFIG include_columns/exclude_columns: a column left out is never
selected from the source, never in the snapshot, and a changed list reloads.

The proof runs against PostgreSQL with a login that may read only the kept
columns (column-level GRANTs, as a DBA would hide personal data): if the
extraction query selected an excluded column, PostgreSQL would refuse it.
"""

from __future__ import annotations

import json
import uuid

import duckdb
import pytest
import sqlalchemy as sa

from etl_service.errors import TableConfigError
from etl_service.source.records import ColumnInfo, TableShape
from etl_service.tables import TableSpec, select_columns

NOW = "(now() AT TIME ZONE 'UTC')"


def _exec(engine: sa.Engine, sql: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(sql))


@pytest.fixture
def people(pg_url):
    """A `people` table with PII and a login that cannot read `ssn`."""
    engine = sa.create_engine(pg_url)
    table = f"people_{uuid.uuid4().hex[:8]}"
    role = f"etl_reader_{uuid.uuid4().hex[:8]}"
    _exec(
        engine,
        f"CREATE TABLE {table} (id int PRIMARY KEY, name text, email text, ssn text,"
        " updated_at timestamp NOT NULL)",
    )
    _exec(
        engine,
        f"INSERT INTO {table} SELECT g, 'name-' || g, 'p' || g || '@example.com',"
        f" 'ssn-' || (g * 7919 % 100000), {NOW} FROM generate_series(1, 50) g",
    )
    _exec(engine, f"CREATE ROLE {role} LOGIN")
    _exec(engine, f"GRANT SELECT (id, name, email, updated_at) ON {table} TO {role}")
    url = sa.engine.make_url(pg_url).set(username=role, password=None)
    yield table, url.render_as_string(hide_password=False)
    _exec(engine, f"DROP TABLE {table}")
    _exec(engine, f"DROP OWNED BY {role}")
    _exec(engine, f"DROP ROLE {role}")
    engine.dispose()


def _snapshot(etl, table: str, tmp_path) -> tuple[list[str], list[str]]:
    """The manifest's columns, and the snapshot file's own columns of `table`."""
    manifest = etl.publisher.current()
    names = [c.name for c in manifest.tables[table].columns]
    local = tmp_path / f"snap-{manifest.version}.db"
    local.write_bytes(etl.publisher.store.get_bytes(manifest.snapshot_key)[0])
    con = duckdb.connect(str(local), read_only=True)
    try:
        held = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    finally:
        con.close()
    return names, held


def test_an_excluded_column_never_reaches_the_snapshot(people, make_engine, tmp_path):
    table, reader_url = people
    config = {table: {"exclude_columns": ["ssn"]}}
    etl = make_engine(
        SOURCE_URL=reader_url,
        TABLES_TO_SYNC=table,
        TABLE_CONFIG=json.dumps(config),
        SNAPSHOT_COMPRESSION="none",
    )
    result = etl.run_cycle()  # would fail with "permission denied" if ssn were selected
    assert result.published, result
    assert [n for n, _ in etl.warehouse.columns(table)] == ["id", "name", "email", "updated_at"]
    names, held = _snapshot(etl, table, tmp_path)
    assert "ssn" not in names and "ssn" not in held


def test_a_changed_list_reloads_the_table_without_the_column(people, make_engine, pg_url):
    table, reader_url = people
    first = make_engine(
        SOURCE_URL=reader_url,
        TABLES_TO_SYNC=table,
        TABLE_CONFIG=json.dumps({table: {"exclude_columns": ["ssn"]}}),
    )
    first.run_cycle()
    first.close()
    again = make_engine(
        SOURCE_URL=reader_url,
        TABLES_TO_SYNC=table,
        TABLE_CONFIG=json.dumps(
            {table: {"include_columns": ["id", "name", "updated_at"], "schema_contract": "freeze"}}
        ),
    )
    result = again.run_cycle()
    assert result.rows[table]["mode"] == "full"
    assert result.rows[table]["reason"] == "column list changed"
    assert [n for n, _ in again.warehouse.columns(table)] == ["id", "name", "updated_at"]
    assert "email" not in [c.name for c in again.publisher.current().tables[table].columns]
    assert again.warehouse.row_count(table) == 50


def _shape() -> TableShape:
    def col(name: str) -> ColumnInfo:
        return ColumnInfo(name, "VARCHAR", is_timestamp=False, has_timezone=False)

    return TableShape(tuple(col(n) for n in ("id", "email", "updated_at")), ("id",))


@pytest.mark.parametrize(
    ("lists", "fragment"),
    [
        ({"exclude_columns": ("emial",)}, "does not have: ['emial']"),
        ({"exclude_columns": ("id",)}, "the sync needs columns ['id']"),
        ({"include_columns": ("email",)}, "the sync needs columns"),
    ],
)
def test_bad_lists_are_named(lists, fragment):
    spec = TableSpec("people", primary_key=("id",), **lists)
    with pytest.raises(TableConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        select_columns(spec, _shape())


def test_the_lists_are_read_from_table_config():
    from etl_service.tables import table_specs

    (spec,) = table_specs(["people"], {"people": {"exclude_columns": ["ssn", "email"]}})
    assert spec.exclude_columns == ("ssn", "email")
    with pytest.raises(TableConfigError, match="must be a list"):
        table_specs(["people"], {"people": {"include_columns": "id"}})
