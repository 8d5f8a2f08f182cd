"""The one logging setup for both services: structlog rendering JSON lines.

Standard-library loggers (uvicorn, gunicorn, apscheduler, botocore) are routed
through the same processors, so every line on stderr is one JSON object.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure_logging", "get_logger", "json_formatter"]

# The process's service name, on every line: a context variable bound once
# reaches only the thread that bound it (the scheduler's and the query pool's
# threads logged without it).
_service: str | None = None


def _add_service(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    if _service is not None:
        event_dict.setdefault("service", _service)
    return event_dict


_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    _add_service,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
]


def configure_logging(level: str = "INFO", *, service: str, json: bool = True) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    global _service
    _service = service
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    # stderr: stdout stays for what a command prints (`analytics-etl status` JSON),
    # and containers collect both.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at WARNING unless asked for DEBUG.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(
            logging.DEBUG if level.upper() == "DEBUG" else logging.WARNING
        )


def json_formatter(service: str | None = None) -> logging.Formatter:
    """The JSON line formatter, for logging set up elsewhere (Gunicorn's
    `logconfig_dict`: its master and its error/access logs)."""
    global _service
    _service = service or _service
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
