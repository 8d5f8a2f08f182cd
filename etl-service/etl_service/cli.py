"""`analytics-etl`: run the scheduler, one cycle, or inspect state and versions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from analytics_shared.errors import ConfigurationError
from analytics_shared.logging_config import configure_logging
from analytics_shared.settings import load_settings
from etl_service.ops import versions
from etl_service.settings import EtlSettings

if TYPE_CHECKING:
    from etl_service.sync import CycleResult, SyncEngine

__all__ = ["main"]


def _engine(settings: EtlSettings) -> SyncEngine:
    from etl_service.sync import SyncEngine

    return SyncEngine.from_settings(settings)


def _print(document: object) -> None:
    print(json.dumps(document, default=str, indent=2))


def cmd_run(settings: EtlSettings, _args: argparse.Namespace) -> int:
    from etl_service.ops.monitoring import CycleMonitor
    from etl_service.scheduler import run_scheduler

    engine = _engine(settings)
    monitor = CycleMonitor(settings, engine.state)
    if engine.memory_budget is not None:
        monitor.metrics.show_memory_budget(engine.memory_budget.as_dict())
    monitor.start()
    try:
        run_scheduler(engine, settings.sync_interval_seconds, monitor)
    finally:
        monitor.stop()
        engine.close()
    return 0


def _report(result: CycleResult) -> int:
    print(
        json.dumps(
            {
                "status": result.status,
                "version": result.version,
                "published": result.published,
                "rows": result.rows,
                "failed_tables": result.failed_tables,
                "error": result.error,
            }
        )
    )
    return 0 if result.status in ("success", "skipped") else 1


def cmd_sync(settings: EtlSettings, args: argparse.Namespace) -> int:
    engine = _engine(settings)
    try:
        result = engine.run_cycle(
            full_refresh=args.full_refresh,
            tables=args.table or None,
            reconcile=args.reconcile,
            kind="full-refresh" if args.full_refresh else "sync",
        )
    finally:
        engine.close()
    return _report(result)


def cmd_backfill(settings: EtlSettings, args: argparse.Namespace) -> int:
    """Reload one table from scratch (its watermark is forgotten first)."""
    engine = _engine(settings)
    try:
        spec = engine.spec(args.table)
        engine.state.forget_table(spec.name)
        result = engine.run_cycle(full_refresh=True, tables=[spec.name], kind="backfill")
    finally:
        engine.close()
    return _report(result)


def cmd_reconcile(settings: EtlSettings, args: argparse.Namespace) -> int:
    engine = _engine(settings)
    try:
        result = engine.run_cycle(tables=args.table or None, reconcile=True, kind="reconcile")
    finally:
        engine.close()
    return _report(result)


def cmd_status(settings: EtlSettings, _args: argparse.Namespace) -> int:
    from etl_service.state import StateStore

    state = StateStore(settings.resolved_database_url)
    try:
        now = datetime.now(UTC)
        tables = []
        for table in state.table_states():
            synced = table.last_synced_at
            row = asdict(table)
            row["lag_seconds"] = round((now - synced).total_seconds(), 1) if synced else None
            tables.append(row)
        last = state.last_success()
        _print(
            {
                "tables": tables,
                "last_success_age_seconds": (
                    round((now - last["finished_at"]).total_seconds(), 1)
                    if last and last.get("finished_at")
                    else None
                ),
                "open_dead_letters": len(state.dead_letters("open")),
                "runs": state.recent_runs(10),
            }
        )
    finally:
        state.close()
    return 0


def cmd_dlq(settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.state import StateStore

    if args.dlq_command == "list":
        state = StateStore(settings.resolved_database_url)
        try:
            _print(state.dead_letters(None if args.all else "open"))
        finally:
            state.close()
        return 0
    engine = _engine(settings)
    try:
        entry = engine.state.get_dead_letter(args.id)
        if entry is None or entry["status"] != "open":
            print(f"analytics-etl: no open dead letter {args.id}", file=sys.stderr)
            return 1
        if args.dlq_command == "discard":
            engine.state.close_dead_letter(args.id, "discarded")
            print(f"dead letter {args.id} discarded")
            return 0
        tables = [entry["table_name"]] if entry["table_name"] else None
        result = engine.run_cycle(tables=tables, kind="dlq-retry")
        # A successful run resolves the table's open entries itself.
    finally:
        engine.close()
    return _report(result)


def cmd_demo_source(_settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.demo_source import create_demo_source

    create_demo_source(args.url, scale=args.scale).dispose()
    print(f"demo source ready: {args.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics-etl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the scheduler (a cycle every SYNC_INTERVAL_SECONDS)")
    sync = sub.add_parser("sync", help="run one sync cycle now and exit (non-zero on failure)")
    sync.add_argument(
        "--full-refresh", action="store_true", help="reload every table instead of its delta"
    )
    sync.add_argument("--reconcile", action="store_true", help="also reconcile primary keys now")
    sync.add_argument("--table", action="append", help="only this table (repeatable)")
    sub.add_parser("status", help="show watermarks, lag, dead letters and recent runs")
    backfill = sub.add_parser("backfill", help="reload one table from scratch, now")
    backfill.add_argument("table")
    reconcile = sub.add_parser(
        "reconcile", help="one cycle that also removes rows deleted in the source"
    )
    reconcile.add_argument("--table", action="append", help="only this table (repeatable)")
    dlq = sub.add_parser("dlq", help="the dead-letter queue of failed runs and tables")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="open entries (--all: every entry)")
    dlq_list.add_argument("--all", action="store_true")
    for name, text in (("retry", "sync the entry's table now"), ("discard", "close the entry")):
        dlq_sub.add_parser(name, help=text).add_argument("id", type=int)
    sub.add_parser("versions", help="list published snapshots (* marks the current one)")
    rollback = sub.add_parser("rollback", help="make an older published snapshot current")
    rollback.add_argument("version", help="a version id from `analytics-etl versions`")
    demo = sub.add_parser("demo-source", help="create the demo source database")
    demo.add_argument("--url", required=True, help="SQLAlchemy URL of the database to fill")
    demo.add_argument("--scale", type=int, default=1, help="multiplies the row counts")
    return parser


COMMANDS = {
    "run": cmd_run,
    "sync": cmd_sync,
    "status": cmd_status,
    "backfill": cmd_backfill,
    "reconcile": cmd_reconcile,
    "dlq": cmd_dlq,
    "versions": versions.cmd_versions,
    "rollback": versions.cmd_rollback,
    "demo-source": cmd_demo_source,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings(EtlSettings)
    configure_logging(settings.log_level, service="etl-service", json=settings.log_json)
    try:
        return COMMANDS[args.command](settings, args)
    except (ValueError, ConfigurationError) as exc:  # configuration that only fails when used
        print(f"analytics-etl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
