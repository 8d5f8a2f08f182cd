"""Model files: one SELECT per `*.sql` file, with front matter, in dependency order.

A model file looks like this (the leading `-- key: value` lines are its front
matter; the rest is one SELECT):

    -- description: Stock per warehouse and product
    -- materialized: table
    SELECT warehouse, product_id, sum(quantity) AS quantity FROM inventory GROUP BY ALL

The model's name is the file's stem. Which tables and models it reads is found
by DuckDB's own parser (`json_serialize_sql`), never declared by hand, so the
build order cannot drift from the SQL. A dependency cycle, a second
statement, anything but a SELECT or an unknown front-matter key is a
`ModelDefinitionError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb

from etl_service.errors import ModelDefinitionError

__all__ = [
    "BUNDLED_MODELS_DIR",
    "Materialization",
    "ModelDefinition",
    "build_order",
    "configured_models",
    "load_models",
    "parse_model",
    "usable_models",
]

BUNDLED_MODELS_DIR = Path(__file__).parent / "sql"

Materialization = Literal["view", "table"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_FRONT_MATTER = re.compile(r"^--\s*([a-z_]+)\s*:\s*(.*?)\s*$")
_KEYS = {"description", "materialized"}


@dataclass(frozen=True)
class ModelDefinition:
    name: str
    sql: str  # the SELECT, without front matter
    description: str
    materialized: Materialization
    references: frozenset[str]  # every table or view name the SELECT reads
    sql_sha256: str  # of the whole file: a changed description also republishes

    def depends_on(self, names: Iterable[str]) -> frozenset[str]:
        return self.references & frozenset(names)


def _references(tree: Any) -> frozenset[str]:
    """Base-table names in a json_serialize_sql tree, minus the CTEs it defines."""
    tables: set[str] = set()
    ctes: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        in_main = str(node.get("schema_name") or "main").lower() == "main"
        if node.get("type") == "BASE_TABLE" and not node.get("catalog_name") and in_main:
            tables.add(str(node.get("table_name", "")).lower())
        if node.get("type") == "RECURSIVE_CTE_NODE" and node.get("cte_name"):
            ctes.add(str(node["cte_name"]).lower())
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes.update(str(e.get("key", "")).lower() for e in cte_map.get("map", []) or [])
        stack.extend(v for v in node.values() if isinstance(v, dict | list))
    return frozenset(tables - ctes)


def _split_front_matter(path: Path, text: str) -> tuple[dict[str, str], str]:
    meta: dict[str, str] = {}
    lines = text.splitlines()
    body_start = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            continue
        match = _FRONT_MATTER.match(stripped)
        if not match:
            body_start = i
            break
        key, value = match.groups()
        if key not in _KEYS:
            raise ModelDefinitionError(
                f"model file {path.name}: unknown front-matter key {key!r}"
                f" (allowed: {sorted(_KEYS)})"
            )
        meta[key] = value
    else:
        body_start = len(lines)
    return meta, "\n".join(lines[body_start:]).strip().rstrip(";").strip()


def parse_model(path: Path, con: duckdb.DuckDBPyConnection | None = None) -> ModelDefinition:
    """Read one model file; DuckDB's parser checks it and finds what it reads."""
    path = Path(path)
    name = path.stem.lower()
    if not _NAME.match(name):
        raise ModelDefinitionError(
            f"model file {path.name}: the name must be lower-case letters, digits and"
            " underscores, starting with a letter or underscore"
        )
    text = path.read_text(encoding="utf-8")
    meta, sql = _split_front_matter(path, text)
    materialized = meta.get("materialized", "view")
    if materialized not in ("view", "table"):
        raise ModelDefinitionError(
            f"model {name!r}: materialized must be 'view' or 'table' (got {materialized!r})"
        )
    con = con or duckdb.connect(":memory:")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ModelDefinitionError(f"model {name!r}: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ModelDefinitionError(f"model {name!r}: the file must hold exactly one SELECT")
    row = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise ModelDefinitionError(f"model {name!r}: {tree.get('error_message', 'cannot parse')}")
    return ModelDefinition(
        name=name,
        sql=sql,
        description=meta.get("description", ""),
        materialized=materialized,  # type: ignore[arg-type]  # checked above
        references=_references(tree),
        sql_sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def build_order(models: Sequence[ModelDefinition]) -> list[ModelDefinition]:
    """Models sorted so each comes after the models it reads; a cycle is an error."""
    by_name = {m.name: m for m in models}
    done: dict[str, ModelDefinition] = {}
    visiting: list[str] = []

    def visit(model: ModelDefinition) -> None:
        if model.name in done:
            return
        if model.name in visiting:
            loop = [*visiting[visiting.index(model.name) :], model.name]
            raise ModelDefinitionError(
                f"models depend on each other in a cycle: {' -> '.join(loop)}"
            )
        visiting.append(model.name)
        for dep in sorted(model.depends_on(by_name)):
            visit(by_name[dep])
        visiting.pop()
        done[model.name] = model

    for model in sorted(models, key=lambda m: m.name):
        visit(model)
    return list(done.values())


def load_models(folder: Path | None) -> list[ModelDefinition]:
    """Every `*.sql` in `folder`, in build order; none when `folder` is None."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelDefinitionError(f"MODELS_DIR {folder} is not a folder")
    con = duckdb.connect(":memory:")
    try:
        models = [parse_model(p, con) for p in sorted(folder.glob("*.sql"))]
    finally:
        con.close()
    return build_order(models)


def usable_models(
    models: Sequence[ModelDefinition], tables: Iterable[str], *, strict: bool
) -> list[ModelDefinition]:
    """The models that can be built over the synced `tables` (in build order).

    A model reading a name that is neither a synced table nor another model is
    an error when `strict` (an operator's folder: fail at start, not every
    cycle); otherwise (the bundled demo models) it is left out, with the
    models that read it.
    """
    synced = {t.lower() for t in tables}
    clash = sorted(synced & {m.name for m in models})
    if clash:
        raise ModelDefinitionError(f"models {clash} have the names of synced tables")
    kept: list[ModelDefinition] = []
    for model in models:  # build order: a model's dependencies come first
        known = synced | {m.name for m in kept}
        unknown = sorted(model.references - known)
        if not unknown:
            kept.append(model)
        elif strict:
            raise ModelDefinitionError(
                f"model {model.name!r} reads {unknown}, which are neither tables in"
                " TABLES_TO_SYNC nor other models"
            )
    return kept


def configured_models(models_dir: str | None, tables: Iterable[str]) -> list[ModelDefinition]:
    """The models `MODELS_DIR` asks for: unset, the bundled ones that fit the
    synced tables; empty, none; a folder, all of its models (strictly)."""
    if models_dir is None:
        return usable_models(load_models(BUNDLED_MODELS_DIR), tables, strict=False)
    if not models_dir.strip():
        return []
    return usable_models(load_models(Path(models_dir)), tables, strict=True)
