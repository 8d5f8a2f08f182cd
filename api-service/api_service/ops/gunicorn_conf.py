"""Gunicorn settings for production: Uvicorn workers, env-driven, JSON logs.

Use with `analytics-api serve` or `gunicorn -c api-service/gunicorn.conf.py`.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from api_service.ops.bind_check import bind_address

# Railway and most PaaS set PORT; API_BIND wins when given (`serve` checked it).
bind = bind_address()


# Each worker holds its own read-only DuckDB connection and thread pool; DuckDB
# parallelises inside a query, so one or two workers per core is plenty, and
# no more than the container's memory holds (ops/memory_budget.py). Workers
# read WEB_CONCURRENCY to size their share of the memory.
def _workers() -> int:
    if os.environ.get("WEB_CONCURRENCY"):
        return int(os.environ["WEB_CONCURRENCY"])
    from analytics_shared.memory_limit import detect_memory_limit
    from api_service.ops.memory_budget import cpu_workers, plan_workers, replicator_reserve

    limit = detect_memory_limit(os.environ.get("MEMORY_LIMIT"))
    reserve = replicator_reserve(os.environ.get("PUBLISH_MODE"))
    return plan_workers(limit, cpu_workers(multiprocessing.cpu_count()), reserve)


workers = _workers()
os.environ["WEB_CONCURRENCY"] = str(workers)
# Uvicorn under Gunicorn, with Gunicorn's request head limits enforced while the
# head arrives (ops/uvicorn_worker.py); Uvicorn's own worker ignores them.
worker_class = "api_service.ops.uvicorn_worker.BoundedUvicornWorker"
limit_request_line = int(os.environ.get("LIMIT_REQUEST_LINE", "8190"))
limit_request_fields = int(os.environ.get("LIMIT_REQUEST_FIELDS", "100"))
limit_request_field_size = int(os.environ.get("LIMIT_REQUEST_FIELD_SIZE", "16384"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Trust X-Forwarded-* only from the configured proxies (never from everyone).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# The access log is JSON, written by the app itself (request_log.py: one line per
# request with id, route, status, duration, user); Uvicorn's plain one stays off.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
wsgi_app = "api_service.main:app_factory()"
# LOG_JSON (default true): Gunicorn's own lines (the master's, and the error log
# Uvicorn's workers write to) are JSON like the app's, one object per line.
if os.environ.get("LOG_JSON", "true").strip().lower() not in ("0", "false", "no", "off"):
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "analytics_shared.logging_config.json_formatter",
                "service": "api-service",
            }
        },
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["json"], "level": loglevel.upper()},
        "loggers": {
            "gunicorn.error": {"handlers": ["json"], "level": loglevel.upper(), "propagate": False},
            "gunicorn.access": {
                "handlers": ["json"],
                "level": loglevel.upper(),
                "propagate": False,
            },
        },
    }

# Gunicorn's control socket defaults to one path per user; several servers on one
# host (replicas, tests) would fight over it and nothing here uses it.
control_socket_disable = True

# Prometheus: every worker writes its samples to one directory so that /metrics,
# answered by any worker, adds up the whole server. A directory we create is
# removed on exit; a given one (PROMETHEUS_MULTIPROC_DIR) is emptied at start.
_metrics_dir_created = False
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="analytics-api-metrics-")
    _metrics_dir_created = True


_replicator: subprocess.Popen[bytes] | None = None


def on_starting(server: Any) -> None:
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink(missing_ok=True)
    # Lake mode: one replicator per host writes the versions the workers serve
    # (api_service/data/lake_replica.py); the master starts and stops it.
    if os.environ.get("PUBLISH_MODE", "file").strip().lower() == "lake":
        global _replicator
        _replicator = subprocess.Popen([sys.executable, "-m", "api_service.cli", "replicate"])


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _replicator is not None and _replicator.poll() is None:
        _replicator.terminate()
        try:
            _replicator.wait(30)
        except subprocess.TimeoutExpired:
            _replicator.kill()
    if _metrics_dir_created:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
