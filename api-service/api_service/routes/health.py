"""`GET /health`: liveness plus readiness and data freshness (no auth)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_service import __version__
from api_service.deps import ManagerDep
from api_service.responses import json_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(manager: ManagerDep) -> Response:
    status = manager.status()
    body = {"status": "ok" if status["ready"] else "starting", "version": __version__, **status}
    # 503 until a verified snapshot is open, so load balancers wait for readiness.
    return json_response(body, 200 if status["ready"] else 503)
