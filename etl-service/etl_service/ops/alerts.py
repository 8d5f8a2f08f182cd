"""Alerts to an on-call webhook: one message when an incident starts, one when
it resolves — never one per failed cycle.

Two incidents are tracked: `sync_failing` (N consecutive failed cycles) and
`data_stale` (the published data is older than a threshold). A source schema
change is a one-off notice (`schema_changed`, one per distinct change; an error
when the table's contract refused it, a warning otherwise). The payload
shape follows `ALERT_WEBHOOK_FORMAT`: PagerDuty Events v2, Opsgenie, or Slack
(a plain `text` message, also accepted by most chat webhooks).
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from analytics_shared.logging_config import get_logger
from analytics_shared.manifest import SchemaChange
from etl_service.contracts import describe_change

__all__ = ["AlertNotifier", "WebhookFormat"]

log = get_logger(__name__)

WebhookFormat = Literal["pagerduty", "opsgenie", "slack"]


@dataclass
class _Incident:
    name: str
    open: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class AlertNotifier:
    def __init__(
        self,
        webhook_url: str | None,
        *,
        fmt: WebhookFormat = "slack",
        routing_key: str | None = None,
        failure_threshold: int = 3,
        stale_after_seconds: float = 900.0,
        timeout: float = 5.0,
        source: str | None = None,
    ) -> None:
        self.webhook_url = webhook_url
        self.fmt = fmt
        self.routing_key = routing_key
        self.failure_threshold = failure_threshold
        self.stale_after_seconds = stale_after_seconds
        self.timeout = timeout
        self.source = source or f"analytics-etl@{socket.gethostname()}"
        self.consecutive_failures = 0
        self._incidents = {n: _Incident(n) for n in ("sync_failing", "data_stale")}

    def record_cycle(self, ok: bool, *, error: str | None = None) -> None:
        if ok:
            self.consecutive_failures = 0
            self._set("sync_failing", False, "sync cycles are succeeding again")
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self._set(
                "sync_failing",
                True,
                f"{self.consecutive_failures} consecutive sync cycles failed",
                {"last_error": error, "consecutive_failures": self.consecutive_failures},
            )

    def record_data_age(self, age_seconds: float | None) -> None:
        if age_seconds is None:
            return
        stale = age_seconds > self.stale_after_seconds
        summary = (
            f"published data is {age_seconds:.0f}s old (threshold {self.stale_after_seconds:.0f}s)"
            if stale
            else "published data is fresh again"
        )
        self._set("data_stale", stale, summary, {"data_age_seconds": round(age_seconds, 1)})

    def schema_changed(self, change: SchemaChange) -> None:
        refused = change.action == "refused"
        summary = (
            f"source table {change.table} changed ({describe_change(change)});"
            f" contract {change.contract}: {change.action}"
        )
        details = change.model_dump(mode="json")
        digest = hashlib.sha256(repr(sorted(details.items())).encode()).hexdigest()[:12]
        self._send(
            f"schema_changed:{change.table}:{digest}",
            "trigger",
            summary,
            details,
            severity="error" if refused else "warning",
        )

    def _set(
        self, name: str, open_: bool, summary: str, details: dict[str, Any] | None = None
    ) -> None:
        incident = self._incidents[name]
        if incident.open == open_:
            return
        incident.open = open_
        incident.details = details or {}
        self._send(name, "trigger" if open_ else "resolve", summary, incident.details)

    def payload(
        self,
        name: str,
        action: Literal["trigger", "resolve"],
        summary: str,
        details: dict[str, Any],
        severity: str | None = None,
    ) -> dict[str, Any]:
        dedup = f"analytics-etl:{name}"
        if self.fmt == "pagerduty":
            body: dict[str, Any] = {"event_action": action, "dedup_key": dedup}
            if self.routing_key:
                body["routing_key"] = self.routing_key
            if action == "trigger":
                body["payload"] = {
                    "summary": summary,
                    "source": self.source,
                    "severity": severity or ("error" if name == "sync_failing" else "warning"),
                    "custom_details": details,
                }
            return body
        if self.fmt == "opsgenie":
            return {
                "alias": dedup,
                "action": "create" if action == "trigger" else "close",
                "message": summary,
                "source": self.source,
                "details": {k: str(v) for k, v in details.items()},
            }
        icon = ":red_circle:" if action == "trigger" else ":large_green_circle:"
        state = "FIRING" if action == "trigger" else "RESOLVED"
        return {"text": f"{icon} [{state}] analytics-etl {name}: {summary}"}

    def _send(
        self,
        name: str,
        action: Literal["trigger", "resolve"],
        summary: str,
        details: dict[str, Any],
        severity: str | None = None,
    ) -> None:
        log.warning("alert_" + action, incident=name, summary=summary)
        if not self.webhook_url:
            return
        try:
            response = httpx.post(
                self.webhook_url,
                json=self.payload(name, action, summary, details, severity),
                timeout=self.timeout,
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            # Alerting must never break syncing; the log line above still records it.
            log.error("alert_delivery_failed", incident=name, action=action, error=str(exc))
