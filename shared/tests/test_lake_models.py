"""Building models from the lake's definitions table into a replica's copy."""

from __future__ import annotations

import duckdb
import pytest

from analytics_shared.lake_models import (
    MODELS_TABLE,
    LakeModel,
    LakeModelError,
    build_models,
    create_models_table,
    model_infos,
    read_models,
)


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("CREATE TABLE orders AS SELECT i AS id, i % 3 AS status FROM range(10) t(i)")
    return con


def _model(name: str, sql: str, position: int, kind: str = "table") -> LakeModel:
    return LakeModel(name, kind, sql, position, "a" * 64, f"about {name}", ("orders",))


def test_models_are_built_in_position_order_and_the_table_dropped(con) -> None:
    create_models_table(
        con,
        [
            _model("per_status_view", "SELECT status, n FROM per_status", 1, "view"),
            _model("per_status", "SELECT status, count(*) AS n FROM orders GROUP BY 1", 0),
        ],
    )
    built = build_models(con, "lake-3")
    assert [m.name for m in built] == ["per_status", "per_status_view"]
    assert read_models(con) is None, "the definitions table is gone"
    infos = model_infos(con, built)
    assert infos["per_status"].row_count == 3 and infos["per_status"].kind == "table"
    assert infos["per_status_view"].kind == "view"
    assert [c.name for c in infos["per_status_view"].columns] == ["status", "n"]
    assert infos["per_status"].depends_on == ["orders"]
    assert infos["per_status"].description == "about per_status"


def test_a_model_that_fails_builds_nothing_and_names_itself(con) -> None:
    create_models_table(
        con,
        [
            _model("fine", "SELECT count(*) AS n FROM orders", 0),
            _model("broken", "SELECT nope FROM orders", 1),
        ],
    )
    with pytest.raises(LakeModelError, match=r"version lake-4: model 'broken' failed to build"):
        build_models(con, "lake-4")
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert tables == {"orders", MODELS_TABLE}, "rolled back whole"


def test_no_definitions_table_builds_nothing(con) -> None:
    assert build_models(con, "lake-1") == []
