"""`analytics-api`: serve the API under Gunicorn with Uvicorn workers.

Exit codes: 0 done, 1 runtime failure (a dependency unreachable), 2
configuration error (a setting or the whitelist is wrong). Errors print one
line on stderr; --verbose (or LOG_LEVEL=DEBUG) adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from analytics_shared.cli_edge import run_cli
from analytics_shared.errors import ConfigurationError

if TYPE_CHECKING:
    from api_service.settings import ApiSettings

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analytics-api", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show an error's traceback")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API under Gunicorn (production)")
    serve.add_argument("--bind", help="host:port (default API_BIND or 0.0.0.0:$PORT)")
    serve.add_argument("--workers", type=int, help="worker processes (default WEB_CONCURRENCY)")
    serve.add_argument(
        "--with-etl",
        action="store_true",
        help="all-in-one: also run the ETL's scheduler, in the one worker (ALL_IN_ONE)",
    )
    sub.add_parser(
        "replicate",
        help="lake mode: this host's replicator (Gunicorn's master starts it by itself)",
    )
    check = sub.add_parser(
        "check-config", help="validate settings and the query whitelist, then exit"
    )
    check.add_argument(
        "--probe", action="store_true", help="also reach the JWKS, issuer, store and Redis"
    )
    return parser


def _validated_settings() -> ApiSettings:
    """The checks start-up runs (settings, whitelist schema, named queries through
    the guard), here, before anything forks: a bad setting exits instead of
    letting Gunicorn reboot workers forever."""
    from analytics_shared.settings import load_settings
    from analytics_shared.whitelist import load_whitelist
    from api_service.query.named_queries import check_whitelist
    from api_service.settings import ApiSettings

    settings = load_settings(ApiSettings)
    check_whitelist(load_whitelist(settings.query_whitelist_path))  # WhitelistError: exit 2
    settings.open_store()  # STORAGE_URL's folder must be usable
    if settings.publish_mode == "lake":
        from analytics_shared.lake import LakeConfig

        # LAKE_CATALOG_URL and the lake environment: without them the replicator
        # dies at once and the workers would answer 503 "starting" forever.
        catalog = settings.lake_catalog_url
        LakeConfig.from_settings(settings, catalog.get_secret_value() if catalog else None)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.command == "serve":
            _all_in_one_workers(args)
        settings = _validated_settings()
        if args.command == "check-config":
            _plan_memory(None)  # a budget that cannot fit fails here, not at start
            if args.probe:
                from api_service.ops.probes import probe_dependencies

                return probe_dependencies(settings)
            print("configuration ok")
            return 0
        if args.command == "replicate":
            from analytics_shared.logging_config import configure_logging
            from api_service.data.lake_replica import replicate

            # The workers' log format (Gunicorn starts this process beside them).
            configure_logging(settings.log_level, service="api-service", json=settings.log_json)
            replicate(settings)
            return 0
        from api_service.ops.bind_check import check_bind

        check_bind(args.bind)  # a port in use: one line and exit 1, not Gunicorn's retries
        _plan_memory(args.workers)  # ConfigurationError: exit 2, naming the settings
        argv_g = [sys.executable, "-m", "gunicorn", "-c", "python:api_service.ops.gunicorn_conf"]
        if args.bind:
            argv_g += ["--bind", args.bind]
        if args.workers:
            argv_g += ["--workers", str(args.workers)]
        sys.stdout.flush()
        os.execv(sys.executable, argv_g)  # noqa: S606 - replace this process: signals go straight to Gunicorn

    return run_cli("analytics-api", body, verbose=args.verbose)


def _all_in_one_workers(args: argparse.Namespace) -> None:
    """All-in-one (`--with-etl` or ALL_IN_ONE) runs one worker, the ETL inside it."""
    if args.with_etl:
        os.environ["ALL_IN_ONE"] = "true"
    if os.environ.get("ALL_IN_ONE", "").lower() in ("1", "true", "yes", "on"):
        if (args.workers or int(os.environ.get("WEB_CONCURRENCY") or 1)) != 1:
            raise ConfigurationError("all-in-one runs one worker: unset WEB_CONCURRENCY")
        args.workers = 1


def _plan_memory(workers: int | None) -> None:
    """Choose the worker count from the memory (unless given), check that the
    budget fits (ConfigurationError naming the settings when it cannot), and
    log it once for the server."""
    import multiprocessing

    from analytics_shared.logging_config import configure_logging, get_logger
    from analytics_shared.memory_limit import detect_memory_limit
    from analytics_shared.settings import load_settings
    from api_service.main import memory_budget
    from api_service.ops.memory_budget import cpu_workers, plan_workers, replicator_reserve
    from api_service.settings import ApiSettings

    if workers:
        os.environ["WEB_CONCURRENCY"] = str(workers)
    elif not os.environ.get("WEB_CONCURRENCY"):
        limit = detect_memory_limit(os.environ.get("MEMORY_LIMIT"))
        cores = cpu_workers(multiprocessing.cpu_count())
        reserve = replicator_reserve(os.environ.get("PUBLISH_MODE"))
        os.environ["WEB_CONCURRENCY"] = str(plan_workers(limit, cores, reserve))
    # Loaded after WEB_CONCURRENCY is known: the thread defaults follow it.
    settings = load_settings(ApiSettings)
    _, budget = memory_budget(settings)
    configure_logging(settings.log_level, service="api-service", json=settings.log_json)
    get_logger("api_service.memory").info("memory_budget", **budget.as_dict())


if __name__ == "__main__":
    sys.exit(main())
