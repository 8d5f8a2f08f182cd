"""A warm pytest for mutation runs: import the heavy libraries once, fork per run.

Each mutant's test run is a new pytest, and most of its start-up is importing
third-party libraries (DuckDB, Arrow, SQLAlchemy, boto3, FastAPI, ...), the
same for every mutant. `serve` imports them once and forks a child per run;
the child imports the project's own packages from disk, so it sees the
mutated module (the server never imports a project package: it checks). The
test command Cosmic Ray runs is `run`, which asks the server and exits with
the child's status; if the server cannot be reached, `run` runs pytest
itself, so a lost server costs time, never a wrong verdict.

    python scripts/warm_pytest.py serve SOCKET          # scripts/mutation.py starts it
    python scripts/warm_pytest.py run SOCKET -- ARGS... # pytest ARGS, exit status as pytest's
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys

# Imported once by the server; none of them is the project's code.
LIBRARIES = (
    "pytest",
    "duckdb",
    "pyarrow",
    "pyarrow.parquet",
    "connectorx",
    "sqlalchemy",
    "sqlalchemy.dialects.postgresql",
    "sqlalchemy.dialects.sqlite",
    "psycopg",
    "boto3",
    "botocore.session",
    "structlog",
    "pydantic",
    "pydantic_settings",
    "fastapi",
    "httpx",
    "jwt",
    "cryptography.hazmat.primitives.asymmetric.rsa",
    "redis",
    "apscheduler.schedulers.background",
    "zstandard",
    "filelock",
)
PROJECT = ("analytics_shared", "etl_service", "api_service", "testsupport", "conftest")


def serve(path: str) -> None:
    for name in LIBRARIES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in PROJECT)
    if leaked:  # a child would then test the module as it was, not as mutated
        sys.exit(f"warm_pytest: a library imported project modules {leaked[:5]}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            args = json.loads(conn.makefile("r").readline())
            status = _run_forked(conn, args)
            with contextlib.suppress(OSError):
                conn.sendall(f"{status}\n".encode())


def _run_forked(conn: socket.socket, args: list[str]) -> int:
    pid = os.fork()
    if pid == 0:  # the child: one pytest run, output thrown away (the status is the verdict)
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            # Plugins the libraries imported (anyio's) cannot be assertion-rewritten
            # any more; pytest warns, and the project's filterwarnings=error would fail.
            quiet = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
            os._exit(int(pytest.main([*quiet, *args])))
        except BaseException:
            os._exit(99)
    while True:
        # The client went away (Cosmic Ray's timeout killed it): stop the run.
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not conn.recv(1, socket.MSG_PEEK):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -1
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)


def run(path: str, args: list[str]) -> int:
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
    except OSError:
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    with client:
        client.sendall((json.dumps(args) + "\n").encode())
        reply = client.makefile("r").readline().strip()
    if not reply:  # the server died mid-run: decide without it
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    return int(reply)


if __name__ == "__main__":
    command, sock, *rest = sys.argv[1:]
    if command == "serve":
        serve(sock)
    else:
        sys.exit(run(sock, rest[1:] if rest[:1] == ["--"] else rest))
