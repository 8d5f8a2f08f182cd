"""What the read-only commands print: `status`, `commands`, `dlq list`.

Each reads the state database only (never the working DuckDB, so it works
while the worker runs) and names the state database it read. A SQLite state
file that does not exist is refused, not created. On a terminal the output is
a table; piped (or with --json) it is one JSON document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from etl_service.settings import EtlSettings
from etl_service.state import StateStore, TableState

__all__ = [
    "print_commands",
    "print_dead_letters",
    "print_status",
    "render_table",
    "status_document",
]


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain columns, as wide as their widest cell."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def render_records(records: Sequence[Mapping[str, object]], columns: Mapping[str, str]) -> str:
    """`render_table` of dict rows: `columns` maps each header to its key."""
    return render_table(list(columns), [[r[key] for key in columns.values()] for r in records])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return " ".join(str(value).split())[:80]


def _age(now: datetime, then: datetime | None) -> float | None:
    return round((now - then).total_seconds(), 1) if then else None


def _open_state(settings: EtlSettings) -> StateStore:
    return StateStore(settings.resolved_database_url, must_exist=True)


def status_document(state: StateStore) -> dict[str, Any]:
    """Watermarks, lag, open dead letters and recent runs, as `status --json` prints them
    (and `current/status.json` carries them: etl_service.ops.status_file)."""
    from etl_service.control.commands import CommandQueue

    now = datetime.now(UTC)
    open_letters = state.dead_letters("open")
    tables = []
    for table in state.table_states():
        row = asdict(table)
        row["lag_seconds"] = _age(now, table.last_synced_at)
        mine = [d for d in open_letters if d["table_name"] == table.table_name]
        row["open_dead_letters"] = len(mine)
        row["last_error"] = mine[-1]["error"] if mine else None
        tables.append(row)
    # A table that never synced (it failed from the start) shows with its error.
    synced = {t["table_name"] for t in tables}
    for name in sorted({d["table_name"] for d in open_letters if d["table_name"]} - synced):
        mine = [d for d in open_letters if d["table_name"] == name]
        row = {f: None for f in TableState.__dataclass_fields__} | {"table_name": name}
        row |= {
            "lag_seconds": None,
            "open_dead_letters": len(mine),
            "last_error": mine[-1]["error"],
        }
        tables.append(row)
    last = state.last_success()
    return {
        "state": state.where,
        "tables": tables,
        "last_success_at": last.get("finished_at") if last else None,
        "last_success_age_seconds": _age(now, last.get("finished_at")) if last else None,
        "open_dead_letters": len(open_letters),
        "schema_changes": state.schema_changes(10),
        "runs": state.recent_runs(10),
        "commands_pending": CommandQueue(state.engine).pending_count(),
    }


def _lake_status(settings: EtlSettings) -> dict[str, Any]:
    from etl_service.lake_publisher import LakePublisher
    from etl_service.ops.lake_versions import lake_status
    from etl_service.publisher import Publisher

    return lake_status(LakePublisher.from_settings(settings, Publisher.from_settings(settings)))


def print_status(settings: EtlSettings, *, as_json: bool) -> int:
    state = _open_state(settings)
    try:
        doc = status_document(state)
    finally:
        state.close()
    if settings.publish_mode == "lake":
        doc["lake"] = _lake_status(settings)
    if as_json:
        print(json.dumps(doc, default=str, indent=2))
        return 0
    print(f"state: {doc['state']}")
    if "lake" in doc:
        lake = doc["lake"]
        print(
            f"lake: version {lake.get('version', '-')} (snapshot {lake.get('snapshot_id', '-')},"
            f" {lake.get('age_seconds', '-')} s old); newest lake snapshot"
            f" {lake.get('lake_newest_snapshot_id', '-')}"
            + (f"; error: {lake['error']}" if lake.get("error") else "")
        )
    print(
        render_records(
            doc["tables"],
            {
                "table": "table_name",
                "watermark": "watermark",
                "rows": "row_count",
                "lag_s": "lag_seconds",
                "last_synced_at": "last_synced_at",
                "dead_letters": "open_dead_letters",
                "last_error": "last_error",
            },
        )
    )
    print(
        f"\nlast success {doc['last_success_age_seconds']} s ago;"
        f" open dead letters: {doc['open_dead_letters']};"
        f" commands pending: {doc['commands_pending']}\n"
    )
    if doc["schema_changes"]:
        print(
            render_records(
                doc["schema_changes"],
                {"table": "table_name"}
                | {name: name for name in ("detected_at", "contract", "action", "change")},
            )
        )
        print()
    print(
        render_records(
            doc["runs"],
            {
                "run": "id",
                "kind": "kind",
                "status": "status",
                "started_at": "started_at",
                "version": "published_version",
                "error": "error",
            },
        )
    )
    return 0


def print_dead_letters(settings: EtlSettings, *, as_json: bool, include_closed: bool) -> int:
    state = _open_state(settings)
    try:
        entries = state.dead_letters(None if include_closed else "open")
    finally:
        state.close()
    if as_json:
        print(json.dumps(entries, default=str, indent=2))
        return 0
    print(f"state: {state.where}")
    print(
        render_records(
            [{**e, "table_name": e["table_name"] or "*cycle*"} for e in entries],
            {
                "id": "id",
                "table": "table_name",
                "status": "status",
                "attempts": "attempts",
                "last_failed_at": "last_failed_at",
                "error": "error",
            },
        )
    )
    return 0


def print_commands(settings: EtlSettings, *, as_json: bool, limit: int) -> int:
    from etl_service.control.commands import CommandQueue
    from etl_service.control.worker_lock import WorkerLock

    state = _open_state(settings)
    try:
        commands = CommandQueue(state.engine).recent(limit)
        holder = WorkerLock(state).holder()
    finally:
        state.close()
    if as_json:
        doc = {
            "state": state.where,
            "worker": asdict(holder) if holder and holder.role == "worker" else None,
            "commands": [c.as_dict() for c in commands],
        }
        print(json.dumps(doc, default=str, indent=2))
        return 0
    worker = holder.describe() if holder else "none (commands run directly)"
    print(f"state: {state.where}")
    print(f"worker: {worker}", file=sys.stdout)
    print(
        render_table(
            ["id", "kind", "args", "status", "submitted_at", "finished_at", "error"],
            [
                [c.id, c.kind, json.dumps(c.args), c.status, c.submitted_at, c.finished_at, c.error]
                for c in commands
            ],
        )
    )
    return 0
