"""`GET /health`: liveness plus readiness and data freshness.

200 once a verified snapshot is in service and the identity provider's keys
were fetched ("ok", or "degraded" while the last refresh failed and an older
version keeps serving, or while tokens are checked against stale keys because
the key set cannot be fetched); 503 with "starting" until then, so load
balancers only route to workers that can answer queries. `identity_provider`
says which: `ok`, `stale` or `unavailable` (no keys: every request would get
503 auth_unavailable).

Without credentials it shows only what a load balancer or a status page
needs (state, data version and age, the identity provider's state); no paths,
buckets, endpoints or error texts. A bearer token with the `read:status` scope
also gets the details: the last refresh error, the JWKS URL and key age, the
worker's memory budget, counters (per worker process; `worker_pid` says which
one answered) and timings.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_service import __version__
from api_service.deps import IdentityDep, MemoryStatusDep, SnapshotsDep, StatusDetails
from api_service.http.responses import json_response

router = APIRouter(tags=["health"])

PUBLIC_FIELDS = (
    "ready",
    "data_version",
    "data_created_at",
    "data_age_seconds",
    "up_to_date",
    "serving_cached",
    "last_refresh_failed",
)


@router.get("/health")
async def health(
    manager: SnapshotsDep, identity: IdentityDep, memory: MemoryStatusDep, details: StatusDetails
) -> Response:
    await identity.ensure_fetched()  # at most once per cooldown while it fails
    idp = identity.status()
    status = manager.status()
    ready = bool(status["ready"]) and idp["status"] != "unavailable"
    if not status["ready"]:
        state = "starting"
        status["message"] = "no verified data snapshot is loaded yet; queries answer 503"
    elif not ready:
        state = "starting"
        where = f" from {idp['jwks_url']}" if details else ""
        status["message"] = f"no signing keys could be fetched{where}; requests answer 503"
    elif status["last_refresh_failed"] or idp["status"] == "stale":
        state = "degraded"
    else:
        state = "ok"
    if details:
        shown = {**status, "identity_provider": idp, "memory": memory}
    else:
        shown = {k: status[k] for k in (*PUBLIC_FIELDS, "message") if k in status}
        shown["identity_provider"] = {"status": idp["status"]}
    body = {"status": state, "version": __version__, **shown}
    return json_response(body, 200 if ready else 503)
