"""`analytics-etl`: run the scheduler, one cycle, or inspect state and versions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from analytics_shared.cli_edge import run_cli
from analytics_shared.errors import AnalyticsError, ConfigurationError
from analytics_shared.logging_config import configure_logging
from analytics_shared.object_store import StoreUnavailable
from analytics_shared.settings import load_settings
from etl_service.ops import versions
from etl_service.settings import EtlSettings

if TYPE_CHECKING:
    from etl_service.sync import SyncEngine

__all__ = ["main"]


def _engine(settings: EtlSettings) -> SyncEngine:
    from etl_service.sync import SyncEngine

    return SyncEngine.from_settings(settings)


def cmd_run(settings: EtlSettings, _args: argparse.Namespace) -> int:
    from etl_service.control.worker import WorkerControl, hold_worker_lock
    from etl_service.ops.monitoring import CycleMonitor
    from etl_service.scheduler import run_scheduler
    from etl_service.state import StateStore

    state = StateStore(settings.resolved_database_url)
    lock = hold_worker_lock(state)  # before the working DuckDB is opened
    try:
        engine = _engine(settings)
        monitor = CycleMonitor(settings, engine.state)
        if engine.memory_budget is not None:
            monitor.metrics.show_memory_budget(engine.memory_budget.as_dict())
        monitor.start()
        try:
            control = WorkerControl(settings, engine, lock)
            run_scheduler(engine, settings.sync_interval_seconds, monitor, control)
        finally:
            monitor.stop()
            engine.close()
    finally:
        lock.release()
        state.close()
    return 0


def _submit(settings: EtlSettings, args: argparse.Namespace, kind: str, **params: object) -> int:
    from etl_service.control.dispatch import submit_or_run

    if kind != "rollback" and not kind.startswith("dlq-"):
        settings.resolved_source_url  # noqa: B018 - fails first when no source is configured
    unknown = [t for t in (args_tables(params)) if t.lower() not in settings.tables_to_sync]
    if unknown:
        raise ConfigurationError(
            f"table {unknown[0]!r} is not in TABLES_TO_SYNC ({','.join(settings.tables_to_sync)})"
        )
    label = "analytics-etl " + " ".join(sys.argv[1:]) if sys.argv[1:] else f"analytics-etl {kind}"
    return submit_or_run(settings, kind, dict(params), wait=not args.no_wait, label=label[:255])


def args_tables(params: dict[str, object]) -> list[str]:
    tables = params.get("tables") or ([params["table"]] if params.get("table") else [])
    return [str(t) for t in tables] if isinstance(tables, list) else []


def cmd_sync(settings: EtlSettings, args: argparse.Namespace) -> int:
    return _submit(
        settings,
        args,
        "sync",
        full_refresh=args.full_refresh,
        tables=args.table or None,
        reconcile=args.reconcile,
    )


def cmd_backfill(settings: EtlSettings, args: argparse.Namespace) -> int:
    """Reload one table from scratch (its watermark is forgotten first)."""
    return _submit(settings, args, "backfill", table=args.table)


def cmd_reconcile(settings: EtlSettings, args: argparse.Namespace) -> int:
    return _submit(settings, args, "reconcile", tables=args.table or None)


def cmd_rollback(settings: EtlSettings, args: argparse.Namespace) -> int:
    return _submit(settings, args, "rollback", version=args.version)


def cmd_status(settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.ops.status_view import print_status

    return print_status(settings, as_json=_as_json(args))


def cmd_commands(settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.ops.status_view import print_commands

    return print_commands(settings, as_json=_as_json(args), limit=args.limit)


def cmd_dlq(settings: EtlSettings, args: argparse.Namespace) -> int:
    if args.dlq_command == "list":
        from etl_service.ops.status_view import print_dead_letters

        return print_dead_letters(settings, as_json=_as_json(args), include_closed=args.all)
    return _submit(settings, args, f"dlq-{args.dlq_command}", id=args.id)


def cmd_check_config(settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.ops.probes import check_config

    return check_config(settings, probe=args.probe)


def _as_json(args: argparse.Namespace) -> bool:
    """--json, --text, or by default JSON when stdout is not a terminal (scripts)."""
    if getattr(args, "json", None) is not None:
        return bool(args.json)
    return not sys.stdout.isatty()


def cmd_demo_source(_settings: EtlSettings, args: argparse.Namespace) -> int:
    from etl_service.demo_source import create_demo_source

    create_demo_source(args.url, scale=args.scale).dispose()
    print(f"demo source ready: {args.url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics-etl",
        description=__doc__,
        epilog="exit codes: 0 done, 1 runtime failure (a dependency unreachable, the work"
        " failed), 2 configuration error (docs/runbook.md)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the scheduler (a cycle every SYNC_INTERVAL_SECONDS)")
    sync = sub.add_parser("sync", help="run one sync cycle now and exit (non-zero on failure)")
    sync.add_argument(
        "--full-refresh", action="store_true", help="reload every table instead of its delta"
    )
    sync.add_argument("--reconcile", action="store_true", help="also reconcile primary keys now")
    sync.add_argument("--table", action="append", help="only this table (repeatable)")
    status = sub.add_parser("status", help="show watermarks, lag, dead letters and recent runs")
    _output_flags(status)
    commands = sub.add_parser("commands", help="list the commands handed to the worker")
    commands.add_argument("--limit", type=int, default=20)
    _output_flags(commands)
    check = sub.add_parser("check-config", help="validate the settings (--probe: reach each)")
    check.add_argument(
        "--probe", action="store_true", help="also reach the source, state database and store"
    )
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
    _output_flags(dlq_list)
    changing = [sync, backfill, reconcile]
    for name, text in (("retry", "sync the entry's table now"), ("discard", "close the entry")):
        entry = dlq_sub.add_parser(name, help=text)
        entry.add_argument("id", type=int)
        changing.append(entry)
    versions_cmd = sub.add_parser(
        "versions", help="list published snapshots (* marks the current one)"
    )
    _output_flags(versions_cmd)
    rollback = sub.add_parser("rollback", help="make an older published snapshot current")
    rollback.add_argument("version", help="a version id from `analytics-etl versions`")
    changing.append(rollback)
    for command in changing:  # handed to a running worker, or run directly
        command.add_argument(
            "--no-wait",
            action="store_true",
            help="with a worker running: print the command's id and return at once",
        )
    demo = sub.add_parser("demo-source", help="create the demo source database")
    demo.add_argument("--url", required=True, help="SQLAlchemy URL of the database to fill")
    demo.add_argument("--scale", type=int, default=1, help="multiplies the row counts")
    return parser


def _output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--json", dest="json", action="store_true", default=None, help="JSON (default when piped)"
    )
    group.add_argument(
        "--text", dest="json", action="store_false", help="a table (default on a terminal)"
    )


COMMANDS = {
    "run": cmd_run,
    "sync": cmd_sync,
    "status": cmd_status,
    "backfill": cmd_backfill,
    "reconcile": cmd_reconcile,
    "dlq": cmd_dlq,
    "versions": versions.cmd_versions,
    "rollback": cmd_rollback,
    "commands": cmd_commands,
    "check-config": cmd_check_config,
    "demo-source": cmd_demo_source,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        settings = load_settings(EtlSettings)
        configure_logging(settings.log_level, service="etl-service", json=settings.log_json)
        try:
            return COMMANDS[args.command](settings, args)
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"STORAGE_URL: cannot reach the store ({exc}); check STORAGE_URL,"
                " S3_ENDPOINT_URL, the network and the keys"
            ) from exc
        except ValueError as exc:  # configuration that only fails when used
            if isinstance(exc, AnalyticsError):
                raise
            raise ConfigurationError(str(exc)) from exc

    return run_cli("analytics-etl", body, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
