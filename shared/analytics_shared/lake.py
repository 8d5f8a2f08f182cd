"""Talking to the lake-mode processes (DuckDB 1.5.5 + DuckLake) from the services.

The services run DuckDB 2.0.1; DuckLake's extensions exist only for 1.5.5,
and one process cannot hold two DuckDB versions. So every lake operation is
a short-lived process of the lake environment (`make lake-env`, package
`analytics_lake`): `LAKE_PYTHON -m analytics_lake <command>`, a JSON request
on its standard input and a JSON answer on its standard output. A fresh
process per call also keeps DuckDB 1.5.x's memory growth under repeated
upserts (DuckDB issue 25162) from accumulating.

`LakeConfig` carries what every call needs: the PostgreSQL catalog (a libpq
connection string), its schema, the data path under STORAGE_URL
(`<STORAGE_URL>/lake/`) and the S3 credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from analytics_shared.errors import AnalyticsError, ConfigurationError, TransientError

__all__ = [
    "LAKE_PREFIX",
    "LakeConfig",
    "LakeError",
    "LakeUnavailable",
    "libpq_conninfo",
    "resolve_lake_python",
    "run_lake",
]

# Where the lake's data files live inside the store (STORAGE_URL).
LAKE_PREFIX = "lake/"


class LakeError(AnalyticsError):
    """A lake process failed; the message names the command and its cause."""


class LakeUnavailable(LakeError, TransientError):
    """The catalog or the store could not be reached; retrying later may succeed."""


def libpq_conninfo(url: str) -> str:
    """`postgresql[+driver]://user:pw@host:port/db?sslmode=...` as a libpq string."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        raise ConfigurationError(
            "LAKE_CATALOG_URL (or DATABASE_URL in lake mode): the lake's catalog must be"
            " a PostgreSQL database (postgresql://...)"
        )
    fields = {
        "dbname": unquote(parts.path.lstrip("/")),
        "host": parts.hostname,
        "port": parts.port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    for item in filter(None, parts.query.split("&")):
        key, _, value = item.partition("=")
        fields[key] = unquote(value)

    def quoted(value: object) -> str:
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    return " ".join(f"{k}={quoted(v)}" for k, v in fields.items() if v not in (None, ""))


def resolve_lake_python(configured: str | None) -> str:
    """LAKE_PYTHON, else the project's `.venv-lake` (made by `make lake-env`)."""
    if configured:
        return configured
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents):
        candidate = root / ".venv-lake" / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    raise ConfigurationError(
        "lake mode needs the lake environment (DuckDB 1.5.5 with DuckLake):"
        " run `make lake-env`, or set LAKE_PYTHON to its interpreter"
    )


@dataclass(frozen=True)
class LakeConfig:
    catalog: str  # libpq connection string
    metadata_schema: str
    data_path: str  # "s3://bucket/prefix/lake/" or "/abs/folder/lake/"
    python: str
    s3: dict[str, Any] | None = None
    memory_limit: str = "512MB"
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any, catalog_url: str | None) -> LakeConfig:
        """From a service's settings (analytics_shared.settings.CommonSettings)."""
        if not catalog_url:
            raise ConfigurationError(
                "LAKE_CATALOG_URL: lake mode needs the PostgreSQL catalog's URL"
            )
        storage = settings.resolved_storage_url.rstrip("/")
        s3 = None
        if storage.startswith("s3://"):
            data_path = f"{storage}/{LAKE_PREFIX}"
            secret = settings.aws_secret_access_key
            s3 = {
                "key_id": settings.aws_access_key_id,
                "secret": secret.get_secret_value() if secret else None,
                "session_token": os.environ.get("AWS_SESSION_TOKEN"),
                "region": settings.s3_region or "us-east-1",
            }
            if settings.s3_endpoint_url:
                endpoint = urlsplit(settings.s3_endpoint_url)
                s3["endpoint"] = endpoint.netloc
                s3["use_ssl"] = endpoint.scheme == "https"
        else:
            data_path = storage.removeprefix("file://") + "/" + LAKE_PREFIX
        return cls(
            catalog=libpq_conninfo(catalog_url),
            metadata_schema=settings.lake_metadata_schema,
            data_path=data_path,
            python=resolve_lake_python(settings.lake_python),
            s3=s3,
        )

    def request(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "metadata_schema": self.metadata_schema,
            "data_path": self.data_path,
            "s3": self.s3,
            "memory_limit": self.memory_limit,
            "threads": self.threads,
            **self.extra,
        }


_UNREACHABLE = (
    "could not connect",
    "connection refused",
    "timeout",
    "timed out",
    "unable to connect",
)


def run_lake(
    config: LakeConfig, command: str, request: dict[str, Any], *, timeout: float = 3600.0
) -> dict[str, Any]:
    """Run one lake command in its own process and return its answer."""
    body = json.dumps({"lake": config.request(), **request}, default=str)
    try:
        proc = subprocess.run(
            [config.python, "-m", "analytics_lake", command],
            input=body,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LakeUnavailable(f"lake {command}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ConfigurationError(
            f"LAKE_PYTHON: cannot run {config.python} ({exc}); lake mode needs the lake"
            " environment: `make lake-env`, or an image built with WITH_LAKE=true"
        ) from exc
    lines = proc.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        tail = proc.stderr.strip().splitlines()[-3:]
        raise LakeError(
            f"lake {command}: the process ended with {proc.returncode} and no answer: "
            + " | ".join(tail)
        )
    if not answer.get("ok"):
        error = answer.get("error") or {}
        message = f"lake {command}: {error.get('type')}: {error.get('message')}"
        if any(word in message.lower() for word in _UNREACHABLE):
            raise LakeUnavailable(message)
        raise LakeError(message)
    if proc.stderr.strip() and os.environ.get("LAKE_DEBUG"):
        print(proc.stderr, file=sys.stderr)
    return answer
