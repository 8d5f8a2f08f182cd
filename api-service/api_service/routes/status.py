"""`GET /status` (scope `read:status`): the ETL's status merged with this API's freshness.

`etl` is the ETL's `current/status.json` (per table: watermark, lag, rows,
last success, last error, open dead letters; the last runs; schema changes;
pending commands), with ages recomputed now and limited to the tables the
caller's app may read; `api` is this worker's view: the data version it
serves, its age, whether it is the newest, and its identity provider.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from analytics_shared.whitelist import AppPolicy
from api_service.deps import IdentityDep, PolicyDep, ReadStatus, SnapshotsDep, StatusFeedDep

router = APIRouter(tags=["status"])

_API_FIELDS = (
    "ready",
    "data_version",
    "data_created_at",
    "data_age_seconds",
    "latest_version_seen",
    "up_to_date",
    "serving_cached",
    "last_refresh_error",
    "seconds_since_refresh",
    "worker_pid",
)


def _age(now: datetime, stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return round((now - then).total_seconds(), 1)


def _for_caller(doc: dict[str, Any], policy: AppPolicy) -> dict[str, Any]:
    """The document with ages as of now, without tables the caller's app may not read."""
    now = datetime.now(UTC)
    doc = dict(doc)
    doc["age_seconds"] = _age(now, doc.get("generated_at"))
    doc["last_success_age_seconds"] = _age(now, doc.get("last_success_at"))
    doc["tables"] = [
        {**t, "lag_seconds": _age(now, t.get("last_synced_at"))}
        for t in doc.get("tables") or []
        if policy.may_read(str(t.get("table_name")))
    ]
    doc["schema_changes"] = [
        c for c in doc.get("schema_changes") or [] if policy.may_read(str(c.get("table_name")))
    ]
    doc["runs"] = [
        {**r, "rows": {k: v for k, v in (r.get("rows") or {}).items() if policy.may_read(k)}}
        for r in doc.get("runs") or []
    ]
    return doc


@router.get("/status", operation_id="getStatus")
async def status(
    principal: ReadStatus,
    policy: PolicyDep,
    manager: SnapshotsDep,
    identity: IdentityDep,
    feed: StatusFeedDep,
) -> dict[str, object]:
    etl = await run_in_threadpool(feed.read)
    served = manager.status()
    api = {k: served[k] for k in _API_FIELDS}
    api["identity_provider"] = identity.status()["status"]
    return {
        "success": True,
        "api": api,
        "etl": _for_caller(etl.document, policy) if etl.document is not None else None,
        "etl_error": etl.error,
    }
