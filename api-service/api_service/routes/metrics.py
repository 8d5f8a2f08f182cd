"""`GET /metrics`: Prometheus text format (no auth; keep it on the private network)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_service.deps import IdentityDep, MemoryStatusDep, SnapshotsDep
from api_service.ops.metrics import CONTENT_TYPE_LATEST, render_metrics

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics for this server")
async def metrics(
    manager: SnapshotsDep, memory: MemoryStatusDep, identity: IdentityDep
) -> Response:
    body = render_metrics(manager, memory, identity.status())
    return Response(body, media_type=CONTENT_TYPE_LATEST)
