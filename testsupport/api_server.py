"""Running the API as users run it: `analytics-api serve` (Gunicorn + Uvicorn)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from testsupport.ports import free_port
from testsupport.processes import stop_process

__all__ = ["ApiServer", "request_records"]


def request_records(log_path: Path) -> list[dict[str, Any]]:
    """The `request` lines of a server's JSON log (`LOG_JSON=true`): each names
    its `request_id` (the X-Request-ID answered), `path`, `status` and the `pid`
    of the worker that answered."""
    records = []
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and '"request"' in line:
            record = json.loads(line)
            if record.get("event") == "request":
                records.append(record)
    return records


class ApiServer:
    def __init__(
        self,
        env: dict[str, str],
        workers: int = 2,
        log_path: Path | None = None,
        popen: Callable[..., subprocess.Popen[Any]] = subprocess.Popen,
    ) -> None:
        """`popen` starts the server (e.g. `MemoryCgroup(limit).popen`, to cap its memory)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **env,
            "API_BIND": f"127.0.0.1:{self.port}",
            "WEB_CONCURRENCY": str(workers),
        }
        self.log_path = log_path
        self.popen = popen
        self.proc: subprocess.Popen | None = None  # type: ignore[type-arg]

    def start(self, ready_timeout: float = 60.0, require_data: bool = True) -> ApiServer:
        cli = str(Path(sys.executable).parent / "analytics-api")
        with self.log_path.open("ab") if self.log_path else open(os.devnull, "wb") as out:
            self.proc = self.popen(
                [cli, "serve"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"analytics-api exited with {self.proc.returncode}; log: {self.log_path}"
                )
            try:
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200 or (not require_data and r.status_code == 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"API not ready after {ready_timeout}s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15, group=True)
            self.proc = None
