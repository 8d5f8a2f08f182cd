"""`analytics-api`: serve the API under Gunicorn with Uvicorn workers."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics-api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API under Gunicorn (production)")
    serve.add_argument("--bind", help="host:port (default API_BIND or 0.0.0.0:$PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (default WEB_CONCURRENCY)")
    serve.add_argument(
        "--with-etl",
        action="store_true",
        help="all-in-one: also run the ETL's scheduler, in the one worker (ALL_IN_ONE)",
    )
    sub.add_parser("check-config", help="validate settings and the query whitelist, then exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        from analytics_shared.settings import load_settings
        from analytics_shared.whitelist import WhitelistError, load_whitelist
        from api_service.query.named_queries import check_whitelist
        from api_service.settings import ApiSettings

        settings = load_settings(ApiSettings)
        try:
            # The same checks start-up runs: schema, policies, named queries through the guard.
            check_whitelist(load_whitelist(settings.query_whitelist_path))
        except WhitelistError as exc:
            print(f"analytics-api: {exc}", file=sys.stderr)
            return 2
        print("configuration ok")
        return 0
    if args.with_etl:
        os.environ["ALL_IN_ONE"] = "true"
    if os.environ.get("ALL_IN_ONE", "").lower() in ("1", "true", "yes", "on"):
        if (args.workers or int(os.environ.get("WEB_CONCURRENCY") or 1)) != 1:
            print(
                "analytics-api: all-in-one runs one worker: unset WEB_CONCURRENCY", file=sys.stderr
            )
            return 2
        args.workers = 1
    if not _check_memory_budget(args.workers):
        return 2
    argv_g = [sys.executable, "-m", "gunicorn", "-c", "python:api_service.ops.gunicorn_conf"]
    if args.bind:
        argv_g += ["--bind", args.bind]
    if args.workers:
        argv_g += ["--workers", str(args.workers)]
    os.execv(sys.executable, argv_g)  # noqa: S606 - replace this process: signals go straight to Gunicorn


def _check_memory_budget(workers: int | None) -> bool:
    """Choose the worker count from the memory (unless given), check that the
    budget fits, and log it once for the server; False (with the reason on
    stderr) when the settings cannot fit the container."""
    import multiprocessing

    from analytics_shared.errors import ConfigurationError
    from analytics_shared.logging_config import configure_logging, get_logger
    from analytics_shared.memory_limit import detect_memory_limit
    from analytics_shared.settings import load_settings
    from api_service.main import memory_budget
    from api_service.ops.memory_budget import cpu_workers, plan_workers
    from api_service.settings import ApiSettings

    try:
        if workers:
            os.environ["WEB_CONCURRENCY"] = str(workers)
        elif not os.environ.get("WEB_CONCURRENCY"):
            limit = detect_memory_limit(os.environ.get("MEMORY_LIMIT"))
            cores = cpu_workers(multiprocessing.cpu_count())
            os.environ["WEB_CONCURRENCY"] = str(plan_workers(limit, cores))
        # Loaded after WEB_CONCURRENCY is known: the thread defaults follow it.
        settings = load_settings(ApiSettings)
        _, budget = memory_budget(settings)
    except ConfigurationError as exc:
        print(f"analytics-api: {exc}", file=sys.stderr)
        return False
    configure_logging(settings.log_level, service="api-service", json=settings.log_json)
    get_logger("api_service.memory").info("memory_budget", **budget.as_dict())
    return True


if __name__ == "__main__":
    sys.exit(main())
