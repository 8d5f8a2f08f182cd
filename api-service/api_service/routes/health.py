"""`GET /health`: liveness plus readiness and data freshness.

200 once a verified snapshot is in service ("ok", or "degraded" while the last
refresh failed and an older version keeps serving); 503 with "starting" until
then, so load balancers only route to workers that can answer queries.

Without credentials it shows only what a load balancer or a status page
needs (state, data version and age); no paths, buckets, endpoints or error
texts. A bearer token with the `read:status` scope also gets the details: the
last refresh error, counters (per worker process; `worker_pid` says which one
answered) and timings.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from api_service import __version__
from api_service.deps import SnapshotsDep, StatusDetails
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
async def health(manager: SnapshotsDep, details: StatusDetails) -> Response:
    status = manager.status()
    if not status["ready"]:
        state = "starting"
        status["message"] = "no verified data snapshot is loaded yet; queries answer 503"
    elif status["last_refresh_failed"]:
        state = "degraded"
    else:
        state = "ok"
    shown = (
        status if details else {k: status[k] for k in (*PUBLIC_FIELDS, "message") if k in status}
    )
    body = {"status": state, "version": __version__, **shown}
    return json_response(body, 200 if status["ready"] else 503)
