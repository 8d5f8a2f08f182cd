"""`GET /schema`: the tables and models (views and rollups) the caller may query.

With row filters or column policies, it shows what the caller sees: hidden
columns left out, masked ones marked, no total row count of a filtered table,
and no model built on a table the caller sees only in part.
"""

from __future__ import annotations

from fastapi import APIRouter

from analytics_shared.manifest import ColumnSchema
from api_service.access.rewrite import refused_models
from api_service.deps import AccessDep, PolicyDep, ReadSchema, SnapshotsDep

router = APIRouter(tags=["schema"])


@router.get("/schema")
async def schema(
    manager: SnapshotsDep,
    principal: ReadSchema,
    policy: PolicyDep,
    access: AccessDep,
) -> dict[str, object]:
    rules = access.rules.by_table if access is not None else {}

    def columns(name: str, cols: list[ColumnSchema]) -> list[dict[str, str]]:
        rule = rules.get(name.lower())
        return rule.describe(cols) if rule is not None else [c.model_dump() for c in cols]

    def row_count(name: str, count: int | None) -> int | None:
        rule = rules.get(name.lower())
        return None if rule is not None and rule.filter_json is not None else count

    with manager.lease() as snap:
        refused = refused_models(access.rules, snap.manifest) if access is not None else frozenset()
        tables = {
            name: {
                "row_count": row_count(name, info.row_count),
                "watermark": info.watermark,
                "columns": columns(name, info.columns),
                **({"row_filter": True} if row_count(name, 0) is None else {}),
            }
            for name, info in snap.manifest.tables.items()
            if policy.may_read(name)
        }
        models = {
            name: {
                "kind": info.kind,
                "description": info.description,
                "row_count": row_count(name, info.row_count),
                "columns": columns(name, info.columns),
            }
            for name, info in snap.manifest.models.items()
            if policy.may_read(name) and name.lower() not in refused
        }
        version = snap.version
    return {"success": True, "data_version": version, "tables": tables, "models": models}
