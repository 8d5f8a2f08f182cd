"""`analytics-etl`: run the scheduler, one cycle, or inspect state and versions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from analytics_shared.logging_config import configure_logging
from analytics_shared.settings import load_settings

from etl_service import versions
from etl_service.settings import EtlSettings

__all__ = ["main"]


def _engine(settings: EtlSettings):
    from etl_service.sync import SyncEngine

    return SyncEngine(settings)


def cmd_run(settings: EtlSettings, _args: argparse.Namespace) -> int:
    from etl_service.scheduler import run_scheduler

    engine = _engine(settings)
    try:
        run_scheduler(engine, settings.sync_interval_seconds)
    finally:
        engine.close()
    return 0


def cmd_sync(settings: EtlSettings, _args: argparse.Namespace) -> int:
    engine = _engine(settings)
    try:
        result = engine.run_cycle()
    finally:
        engine.close()
    print(
        json.dumps(
            {
                "status": result.status,
                "version": result.version,
                "rows": result.rows,
                "error": result.error,
            }
        )
    )
    return 0 if result.status == "success" else 1


def cmd_status(settings: EtlSettings, _args: argparse.Namespace) -> int:
    from etl_service.state import StateStore

    state = StateStore(settings.resolved_database_url)
    try:
        print(
            json.dumps(
                {"tables": state.table_states(), "runs": state.recent_runs(10)},
                default=str,
                indent=2,
            )
        )
    finally:
        state.close()
    return 0


def cmd_demo_source(_settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.demo_source import create_demo_source

    create_demo_source(args.url, scale=args.scale).dispose()
    print(f"demo source ready: {args.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics-etl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the scheduler (a cycle every SYNC_INTERVAL_SECONDS)")
    sub.add_parser("sync", help="run one sync cycle now and exit (non-zero on failure)")
    sub.add_parser("status", help="show watermarks and recent runs")
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
    except ValueError as exc:  # configuration that only fails when used
        print(f"analytics-etl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
