"""`GET /schema`: the tables and models (views and rollups) the caller may query."""

from __future__ import annotations

from fastapi import APIRouter

from api_service.deps import PolicyDep, ReadSchema, SnapshotsDep

router = APIRouter(tags=["schema"])


@router.get("/schema")
async def schema(
    manager: SnapshotsDep,
    principal: ReadSchema,
    policy: PolicyDep,
) -> dict[str, object]:
    with manager.lease() as snap:
        tables = {
            name: {
                "row_count": info.row_count,
                "watermark": info.watermark,
                "columns": [c.model_dump() for c in info.columns],
            }
            for name, info in snap.manifest.tables.items()
            if policy.may_read(name)
        }
        models = {
            name: {
                "kind": info.kind,
                "description": info.description,
                "row_count": info.row_count,
                "columns": [c.model_dump() for c in info.columns],
            }
            for name, info in snap.manifest.models.items()
            if policy.may_read(name)
        }
        version = snap.version
    return {"success": True, "data_version": version, "tables": tables, "models": models}
