"""Building the models into the working DuckDB, after the cycle's merges.

All models of a cycle are built in ONE DuckDB transaction, and the snapshot
is exported only after it commits: a published version never holds models
computed from other data than its tables. A model DuckDB refuses rolls the
whole build back and raises `ModelBuildError` with the model's name and
DuckDB's message; the cycle then publishes nothing and the previous version
keeps serving.

What is rebuilt (an unchanged cycle costs nothing):
- a `table` model when a table or model it reads changed in this cycle, when
  its SQL file changed, when it is missing, or when `force` (an earlier cycle
  merged without publishing, so what changed then is unknown);
- a `view` in the same cases (it costs nothing to replace, and a reloaded
  input may have new columns its definition must bind to again).
Each model carries its file's sha256 in its DuckDB comment; a model object
whose file is gone is dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import duckdb

from analytics_shared.lake_models import LakeModel, model_shape
from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import ModelInfo
from analytics_shared.snapshot_file import quote_ident
from etl_service.errors import ModelBuildError
from etl_service.models.definitions import ModelDefinition

__all__ = ["ModelBuild", "ModelBuilder"]

log = get_logger(__name__)

# A model's DuckDB comment: this prefix and its file's sha256.
_MARK = "analytics-model sha256="


@dataclass
class ModelBuild:
    """What one build did; `changed` means the snapshot differs because of models
    alone (a new, edited or removed model file), so it must be published."""

    rebuilt: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # an input table is not there yet
    changed: bool = False


class ModelBuilder:
    def __init__(self, models: Sequence[ModelDefinition], tables: Iterable[str]) -> None:
        self.models = list(models)  # in build order
        self.tables = {t.lower() for t in tables}  # the synced tables models may read
        self._names = {m.name for m in self.models}

    def _existing(self, con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str]]:
        """Model objects in the database: name -> (kind, sha256 of the file they came from)."""
        rows = con.execute(
            "SELECT table_name, 'table', comment FROM duckdb_tables()"
            " WHERE database_name = current_database() AND schema_name = 'main'"
            " UNION ALL SELECT view_name, 'view', comment FROM duckdb_views()"
            " WHERE database_name = current_database() AND schema_name = 'main' AND NOT internal"
        ).fetchall()
        return {
            str(name): (str(kind), str(comment).removeprefix(_MARK))
            for name, kind, comment in rows
            if isinstance(comment, str) and comment.startswith(_MARK)
        }

    def build(
        self,
        con: duckdb.DuckDBPyConnection,
        changed_tables: Iterable[str],
        *,
        present_tables: Iterable[str],
        force: bool = False,
    ) -> ModelBuild:
        """Bring every model up to date in one transaction (see the module docstring)."""
        result = ModelBuild()
        changed = {t.lower() for t in changed_tables}
        present = {t.lower() for t in present_tables}
        existing = self._existing(con)
        plan: list[ModelDefinition] = []
        available = set(present)
        for model in self.models:
            missing = sorted((model.references & self.tables) - available)
            if missing or (model.references & self._names) - available:
                result.skipped.append(model.name)
                log.warning("model_skipped_missing_input", model=model.name, missing=missing)
                continue
            available.add(model.name)
            held = existing.get(model.name)
            edited = held is None or held != (model.materialized, model.sql_sha256)
            if edited or force or model.references & changed:
                plan.append(model)
                changed.add(model.name)  # models reading this one rebuild too
                result.changed |= edited
        stale = sorted(set(existing) - self._names)
        if not plan and not stale:
            return result
        current: str | None = None
        try:
            con.execute("BEGIN").fetchall()
            for name in stale:
                current = name
                kind = existing[name][0].upper()
                con.execute(f"DROP {kind} IF EXISTS {quote_ident(name)}").fetchall()
            for model in plan:
                current = model.name
                self._build_one(con, model, existing.get(model.name))
            con.execute("COMMIT").fetchall()
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                con.execute("ROLLBACK").fetchall()
            raise ModelBuildError(current or "?", str(exc).strip()) from exc
        result.rebuilt = [m.name for m in plan]
        result.dropped = stale
        result.changed |= bool(stale)
        log.info("models_built", rebuilt=result.rebuilt, dropped=stale, skipped=result.skipped)
        return result

    @staticmethod
    def _build_one(
        con: duckdb.DuckDBPyConnection, model: ModelDefinition, held: tuple[str, str] | None
    ) -> None:
        name = quote_ident(model.name)
        if held is not None and held[0] != model.materialized:
            con.execute(f"DROP {held[0].upper()} {name}").fetchall()  # view <-> table
        kind = model.materialized.upper()
        con.execute(f"CREATE OR REPLACE {kind} {name} AS {model.sql}").fetchall()
        comment = (_MARK + model.sql_sha256).replace("'", "''")
        con.execute(f"COMMENT ON {kind} {name} IS '{comment}'").fetchall()

    def infos(self, con: duckdb.DuckDBPyConnection) -> dict[str, ModelInfo]:
        """The manifest's record of each model the database holds (counts rows)."""
        existing = self._existing(con)
        infos = {}
        for model in self.models:
            if model.name not in existing:
                continue
            columns, rows = model_shape(con, model.name)
            infos[model.name] = ModelInfo(
                kind=model.materialized,
                description=model.description,
                row_count=rows,
                sql_sha256=model.sql_sha256,
                depends_on=sorted(model.references & (self.tables | self._names)),
                columns=columns,
            )
        return infos

    def lake_models(self, infos: dict[str, ModelInfo]) -> list[LakeModel]:
        """Lake mode: the definitions of the models in `infos` (those built), in
        build order, as the lake's `__analytics_models` carries them."""
        return [
            LakeModel(
                name=model.name,
                kind=model.materialized,
                sql=model.sql,
                position=position,
                sql_sha256=model.sql_sha256,
                description=model.description,
                depends_on=tuple(infos[model.name].depends_on),
            )
            for position, model in enumerate(m for m in self.models if m.name in infos)
        ]
