"""Talking to the lake-mode processes (DuckDB 1.5.5 + DuckLake) from the services.

The services run DuckDB 2.0.1; DuckLake's extensions exist only for 1.5.5,
and one process cannot hold two DuckDB versions. So every lake operation runs
in a process of the lake environment (`make lake-env`, package
`analytics_lake`): `LAKE_PYTHON -m analytics_lake serve`, JSON requests on
its standard input and JSON answers on its standard output, one per line.
`LakeProcess` keeps one such process per lake and reuses it (loading DuckDB
and the extensions costs about a second); the process ends itself after
LAKE_PROCESS_IDLE_SECONDS without a call, and after a call that left it above
LAKE_PROCESS_MAX_RSS_MB, so DuckDB 1.5.x's memory growth under repeated
upserts (DuckDB issue 25162) cannot accumulate and an idle service does not
hold its memory.

`LakeConfig` carries what every call needs: the PostgreSQL catalog (a libpq
connection string), its schema, the data path under STORAGE_URL
(`<STORAGE_URL>/lake/`) and the S3 credentials.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from analytics_shared.errors import AnalyticsError, ConfigurationError, TransientError

__all__ = [
    "LAKE_PREFIX",
    "LakeConfig",
    "LakeError",
    "LakeProcess",
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
    memory_limit: str = "128MB"  # the lake process's DuckDB
    threads: int = 2
    idle_seconds: float = 120.0  # the lake process ends after this long unused
    max_rss_mb: float = 300.0  # ... and after a call that left it larger than this
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
            memory_limit=settings.lake_duckdb_memory_limit,
            idle_seconds=settings.lake_process_idle_seconds,
            max_rss_mb=settings.lake_process_max_rss_mb,
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


class LakeProcess:
    """One lake process (`python -m analytics_lake serve`), started on first use,
    restarted when it has ended itself; one call at a time."""

    def __init__(self, config: LakeConfig) -> None:
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self._lock = threading.Lock()
        self.started = 0  # processes started so far (tests and benchmarks read it)

    def call(self, command: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        body = json.dumps({"command": command, "request": request}, default=str).encode()
        with self._lock:
            for _ in range(3):
                proc = self._running()
                assert proc.stdin is not None
                try:
                    _write_all(proc.stdin.fileno(), body + b"\n")
                except BrokenPipeError:  # it had ended before reading: send again
                    self._reap()
                    continue
                answer = self._answer(command, proc, timeout)
                if answer.get("idle_exit"):  # it ended without reading the request
                    self._reap()
                    continue
                if answer.get("recycled"):
                    self._reap()
                return answer
            raise LakeError(f"lake {command}: the lake process keeps ending before it answers")

    def close(self) -> None:
        with self._lock:
            self._reap()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._reap()
        try:
            self._proc = subprocess.Popen(
                [
                    self.config.python,
                    "-m",
                    "analytics_lake",
                    "serve",
                    f"--idle-seconds={self.config.idle_seconds:g}",
                    f"--max-rss-mb={self.config.max_rss_mb:g}",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # unbuffered: nothing is left to flush into a closed pipe
            )
        except OSError as exc:
            raise ConfigurationError(
                f"LAKE_PYTHON: cannot run {self.config.python} ({exc}); lake mode needs the"
                " lake environment: `make lake-env`, or an image built with WITH_LAKE=true"
            ) from exc
        self.started += 1
        return self._proc

    def _answer(
        self, command: str, proc: subprocess.Popen[bytes], timeout: float
    ) -> dict[str, Any]:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                self._reap()
                raise LakeUnavailable(f"lake {command}: no answer within {timeout:g} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = proc.wait()
                self._reap()
                raise LakeError(
                    f"lake {command}: the lake process ended with {code} before it answered"
                    " (its standard error is in this service's log)"
                )
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise LakeError(f"lake {command}: an answer that is not an object: {line[:200]!r}")
        return answer

    def _reap(self) -> None:
        proc, self._proc, self._pending = self._proc, None, b""
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # end of input: it exits by itself
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# One process per lake (the ETL: its catalog and store; an API host: its mirror's
# reader); a few at most, the least recently used closed first.
_processes: OrderedDict[str, LakeProcess] = OrderedDict()
_processes_lock = threading.Lock()
MAX_PROCESSES = 4


def lake_process(config: LakeConfig) -> LakeProcess:
    key = json.dumps([config.python, config.request()], sort_keys=True, default=str)
    with _processes_lock:
        process = _processes.pop(key, None) or LakeProcess(config)
        _processes[key] = process
        while len(_processes) > MAX_PROCESSES:
            _processes.popitem(last=False)[1].close()
    return process


@atexit.register
def _close_all() -> None:
    with _processes_lock:
        while _processes:
            _processes.popitem()[1].close()


def run_lake(
    config: LakeConfig, command: str, request: dict[str, Any], *, timeout: float = 3600.0
) -> dict[str, Any]:
    """Run one lake command in the lake's process and return its answer."""
    answer = lake_process(config).call(command, {"lake": config.request(), **request}, timeout)
    if not answer.get("ok"):
        error = answer.get("error") or {}
        message = f"lake {command}: {error.get('type')}: {error.get('message')}"
        if any(word in message.lower() for word in _UNREACHABLE):
            raise LakeUnavailable(message)
        raise LakeError(message)
    return answer
