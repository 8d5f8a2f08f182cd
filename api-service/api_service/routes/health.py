"""`GET /health`: liveness plus readiness and data freshness (no auth).

200 once a verified snapshot is in service ("ok", or "degraded" while the last
refresh failed and an older version keeps serving); 503 with "starting" until
then, so load balancers only route to workers that can answer queries.
Counters are per worker process (`worker_pid` says which one answered).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_service import __version__
from api_service.deps import MemoryStatusDep, SnapshotsDep
from api_service.http.responses import json_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(manager: SnapshotsDep, memory: MemoryStatusDep) -> Response:
    status = manager.status()
    status["memory"] = memory  # this worker's budget (ops/memory_budget.py)
    if not status["ready"]:
        state = "starting"
        status["message"] = "no verified data snapshot is loaded yet; queries answer 503"
    elif status["last_refresh_failed"]:
        state = "degraded"
    else:
        state = "ok"
    body = {"status": state, "version": __version__, **status}
    return json_response(body, 200 if status["ready"] else 503)
