"""`GET /schema`: the tables and columns the caller may query."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api_service.auth.tokens import Principal
from api_service.deps import ManagerDep, WhitelistDep, policy_for, require_scope

router = APIRouter(tags=["schema"])


@router.get("/schema")
async def schema(
    manager: ManagerDep,
    whitelist: WhitelistDep,
    principal: Annotated[Principal, Depends(require_scope("read:schema"))],
) -> dict[str, object]:
    policy = policy_for(principal, whitelist)
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
        version = snap.version
    return {"success": True, "data_version": version, "tables": tables}
