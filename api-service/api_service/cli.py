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
    argv_g = [sys.executable, "-m", "gunicorn", "-c", "python:api_service.ops.gunicorn_conf"]
    if args.bind:
        argv_g += ["--bind", args.bind]
    if args.workers:
        argv_g += ["--workers", str(args.workers)]
    os.execv(sys.executable, argv_g)  # noqa: S606 - replace this process: signals go straight to Gunicorn


if __name__ == "__main__":
    sys.exit(main())
