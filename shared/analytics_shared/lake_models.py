"""Models in lake mode: their definitions travel in the lake as a small table.

File mode ships the models built into the snapshot file. A lake replica is
written by DuckDB 1.5.5 from the lake's tables only, so the ETL commits the
definitions as the lake table `__analytics_models` (one row per model, in
build order), in the same DuckLake transaction as the cycle's table changes.
That makes a model edit a new lake snapshot (a new version), lets rollback
restore the definitions with the data, and lets replicas carry them like any
table (primary key `name`, verified by checksum). An API host then builds
the models into the copy it installs (`build_models`, DuckDB 2.0.1, the
version the ETL built and counted them with) and drops the table, so users
never see it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analytics_shared.errors import AnalyticsError
from analytics_shared.manifest import ColumnSchema, ModelInfo
from analytics_shared.snapshot_file import quote_ident

__all__ = [
    "MODELS_PRIMARY_KEY",
    "MODELS_TABLE",
    "LakeModel",
    "LakeModelError",
    "build_models",
    "create_models_table",
    "model_infos",
    "model_shape",
    "read_models",
]

MODELS_TABLE = "__analytics_models"
MODELS_PRIMARY_KEY = ["name"]
# Plain scalar types only: the table's checksum must be equal in 1.5.5 and 2.0.1.
_COLUMNS = (
    ("name", "VARCHAR"),
    ("kind", "VARCHAR"),
    ("sql", "VARCHAR"),
    ("position", "INTEGER"),
    ("sql_sha256", "VARCHAR"),
    ("description", "VARCHAR"),
    ("depends_on", "VARCHAR"),  # a JSON list: rollback's manifest needs it (row filters)
)


class LakeModelError(AnalyticsError):
    """A model from the lake could not be built into a replica's copy."""


@dataclass(frozen=True)
class LakeModel:
    """One row of `__analytics_models`."""

    name: str
    kind: str  # view | table
    sql: str  # one SELECT
    position: int  # build order: a model comes after those it reads
    sql_sha256: str
    description: str = ""
    depends_on: tuple[str, ...] = ()

    def row(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.kind,
            self.sql,
            self.position,
            self.sql_sha256,
            self.description,
            json.dumps(list(self.depends_on)),
        )


def create_models_table(con: Any, models: Sequence[LakeModel]) -> None:
    """`__analytics_models` holding `models`, in `con`'s current database."""
    columns = ", ".join(f"{quote_ident(n)} {t}" for n, t in _COLUMNS)
    con.execute(f"CREATE OR REPLACE TABLE {quote_ident(MODELS_TABLE)} ({columns})")
    if models:
        marks = ", ".join("?" for _ in _COLUMNS)
        con.executemany(
            f"INSERT INTO {quote_ident(MODELS_TABLE)} VALUES ({marks})", [m.row() for m in models]
        )


def read_models(con: Any) -> list[LakeModel] | None:
    """The definitions `con` holds, in build order; None when it has no such table."""
    found = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
        " AND schema_name = 'main' AND table_name = ?",
        [MODELS_TABLE],
    ).fetchall()
    if not found[0][0]:
        return None
    names = ", ".join(quote_ident(n) for n, _ in _COLUMNS)
    rows = con.execute(
        f"SELECT {names} FROM {quote_ident(MODELS_TABLE)} ORDER BY position, name"
    ).fetchall()
    return [
        LakeModel(
            name=str(name),
            kind=str(kind),
            sql=str(sql),
            position=int(position),
            sql_sha256=str(sha),
            description=str(description or ""),
            depends_on=tuple(json.loads(depends_on or "[]")),
        )
        for name, kind, sql, position, sha, description, depends_on in rows
    ]


def build_models(con: Any, version: str) -> list[LakeModel]:
    """Create the models `__analytics_models` defines, in order, and drop the table,
    in one transaction. A model DuckDB refuses rolls everything back and raises
    `LakeModelError` naming the model and the version."""
    models = read_models(con)
    if models is None:
        return []
    current = "?"
    try:
        con.execute("BEGIN").fetchall()
        for model in models:
            current = model.name
            if model.kind not in ("view", "table"):
                raise LakeModelError(f"unknown model kind {model.kind!r}")
            kind = model.kind.upper()
            con.execute(f"CREATE {kind} {quote_ident(model.name)} AS {model.sql}").fetchall()
        current = MODELS_TABLE
        con.execute(f"DROP TABLE {quote_ident(MODELS_TABLE)}").fetchall()
        con.execute("COMMIT").fetchall()
    except Exception as exc:  # DuckDB's error, whichever version: named with the model
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK").fetchall()
        message = str(exc).strip()
        raise LakeModelError(
            f"version {version}: model {current!r} failed to build: {message}"
        ) from exc
    return models


def model_shape(con: Any, name: str) -> tuple[list[ColumnSchema], int]:
    """A built model's columns and row count, as the manifest records them."""
    columns = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns()"
        " WHERE database_name = current_database() AND schema_name = 'main'"
        " AND table_name = ? ORDER BY column_index",
        [name],
    ).fetchall()
    # fetchall: a half-read result would hold its transaction open.
    rows = con.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchall()
    return [ColumnSchema(name=str(n), type=str(t)) for n, t in columns], int(rows[0][0])


def model_infos(con: Any, models: Sequence[LakeModel]) -> dict[str, ModelInfo]:
    """The manifest's record of built `models` (rollback: read back from the lake)."""
    infos = {}
    for model in models:
        columns, rows = model_shape(con, model.name)
        infos[model.name] = ModelInfo(
            kind=model.kind,  # type: ignore[arg-type]  # build_models checked it
            description=model.description,
            row_count=rows,
            sql_sha256=model.sql_sha256,
            depends_on=list(model.depends_on),
            columns=columns,
        )
    return infos
