"""`GET /health`: liveness plus readiness and data freshness (no auth).

200 once a verified snapshot is in service and the identity provider's keys
were fetched ("ok", or "degraded" while the last refresh failed and an older
version keeps serving, or while tokens are checked against stale keys because
the key set cannot be fetched); 503 with "starting" until then, so load
balancers only route to workers that can answer queries. `identity_provider`
says which: `ok`, `stale` or `unavailable` (no keys: every request would get
503 auth_unavailable).
Counters are per worker process (`worker_pid` says which one answered).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_service import __version__
from api_service.deps import IdentityDep, MemoryStatusDep, SnapshotsDep
from api_service.http.responses import json_response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(manager: SnapshotsDep, identity: IdentityDep, memory: MemoryStatusDep) -> Response:
    await identity.ensure_fetched()  # at most once per cooldown while it fails
    idp = identity.status()
    status = manager.status()
    status["memory"] = memory  # this worker's budget (ops/memory_budget.py)
    ready = bool(status["ready"]) and idp["status"] != "unavailable"
    if not status["ready"]:
        state = "starting"
        status["message"] = "no verified data snapshot is loaded yet; queries answer 503"
    elif not ready:
        state = "starting"
        status["message"] = (
            f"no signing keys could be fetched from {idp['jwks_url']}; requests answer 503"
        )
    elif status["last_refresh_failed"] or idp["status"] == "stale":
        state = "degraded"
    else:
        state = "ok"
    body = {"status": state, "version": __version__, **status, "identity_provider": idp}
    return json_response(body, 200 if ready else 503)
