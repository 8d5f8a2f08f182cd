"""A warm pytest for mutation runs (used by scripts/mutation.py).

Most of a cold run's time per mutant is Python and pytest starting and
importing DuckDB, FastAPI, PyJWT... The server below imports those once, then
forks a child per mutant; the child forgets every module of the repository
(so the mutated file and the tests are imported fresh, from disk) and runs
pytest.main with the module's tests. The server itself never imports the
repository's code, so no mutant's state can leak into the next.

Cosmic Ray's test command is the client: it connects to the server's unix
socket and exits with the child's exit code. When Cosmic Ray kills the client
(its timeout), the server sees the connection close and kills the child's
process group.

    python scripts/mutation_warm.py serve SOCKET ROOT LOG -- PYTEST_ARGS...
    python scripts/mutation_warm.py client SOCKET
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import sys
from pathlib import Path

# The repository's packages, wherever they are imported from.
PROJECT = {"analytics_shared", "api_service", "etl_service", "analytics_client", "analytics_lake"}
PROJECT |= {"testsupport", "conftest"}


def _ours(name: str, module: object, root: str) -> bool:
    """A module of the repository (the scratch copy): forgotten in each child."""
    if name == "__main__":  # this script; DuckDB's start-up looks at it
        return False
    path = os.path.realpath(getattr(module, "__file__", None) or "")
    if name.partition(".")[0] in PROJECT:
        return True
    return path.startswith(root + os.sep) and "site-packages" not in path


def _run_tests(root: str, log: str, args: list[str], modules_out: str | None) -> None:
    """In the forked child: pytest on a clean slate of the repository's modules."""
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for name, module in list(sys.modules.items()):
            if _ours(name, module, root):
                del sys.modules[name]
        importlib.invalidate_caches()
        os.chdir(root)
        import pytest

        code = int(pytest.main(args))
        if modules_out:  # the warm-up: which third-party modules the tests import
            names = [n for n, m in sys.modules.items() if not _ours(n, m, root)]
            Path(modules_out).write_text("\n".join(names))
    except BaseException:  # the child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fork_and_wait(root: str, log: str, args: list[str], conn: socket.socket | None) -> int:
    pid = os.fork()
    if pid == 0:
        _run_tests(root, log, args, None if conn else log + ".modules")
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1
        if conn is not None and select.select([conn], [], [], 0.02)[0]:
            if not conn.recv(1):  # the client was killed (Cosmic Ray's timeout)
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return -1
        elif conn is None:
            select.select([], [], [], 0.02)


def serve(sock_path: str, root: str, log: str, args: list[str]) -> None:
    root = os.path.realpath(root)
    sys.dont_write_bytecode = True  # a mutant of the same size must not reuse a stale .pyc
    import pytest  # noqa: F401 - warm

    # Pytest plugins imported here are not assertion-rewritten in the children
    # (only the plugins' own asserts; the tests' are) and pytest warns of it.
    args = ["-W", "ignore::pytest.PytestAssertRewriteWarning", *args]
    # Warm-up: run the tests once unmutated; import what they imported.
    code = _fork_and_wait(root, log, args, None)
    if code != 0:
        sys.exit(f"the tests fail on the unmutated code (exit {code}); see {log}")
    for name in Path(log + ".modules").read_text().split("\n"):
        if name and name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # a module that imports only in its package's context
                continue
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        conn, _ = server.accept()
        with conn:
            code = _fork_and_wait(root, log, args, conn)
            if code >= 0:
                conn.sendall(f"{code}\n".encode())


def client(sock_path: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(sock_path)
        reply = conn.makefile().readline().strip()
    return int(reply) if reply.lstrip("-").isdigit() else 2


if __name__ == "__main__":
    if sys.argv[1] == "client":
        sys.exit(client(sys.argv[2]))
    split = sys.argv.index("--")
    serve(*sys.argv[2:5], sys.argv[split + 1 :])
