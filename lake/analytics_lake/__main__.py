"""`python -m analytics_lake serve`: a lake process answering JSON requests, one per line.

Each request line is {"command": <name>, "request": {...}}; each answer line is
{"ok": true, ...} or {"ok": false, "error": {"type", "message"}}. The caller
(analytics_shared.lake.LakeProcess) keeps one such process and sends it one
request at a time, so the ~1 s of loading DuckDB and its four extensions is
paid once per process instead of once per call.

The process ends by itself, announcing it on its answer stream:
- after `--idle-seconds` without a request: {"idle_exit": true} (a request the
  caller sent at that moment was never read, so the caller resends it);
- after an answer, when its resident memory exceeds `--max-rss-mb` (DuckDB
  1.5.x grows under repeated upserts, issue 25162): the answer carries
  "recycled": true and the next call starts a fresh process;
- at the end of its input (the caller is gone).
Anything else written to standard output goes to standard error instead, so
the answer stream holds answers only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import sys
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from analytics_lake import connection, history, publish, replica

COMMANDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "publish": publish.publish,
    "maintain": publish.maintain,
    "restore": publish.restore,
    "snapshots": history.snapshots,
    "plan": replica.plan,
    "bootstrap": replica.bootstrap,
    "advance": replica.advance,
    "export": replica.export,
}


def handle(line: bytes) -> dict[str, Any]:
    message: Any = None
    try:
        message = json.loads(line)
        command = COMMANDS[message["command"]]
        answer = {"ok": True, **command(message["request"])}
    except Exception as exc:  # the caller decides; the message names the cause
        # DuckDB's errors quote the catalog's connection string, password included,
        # and the caller logs and stores them (run history, dead letters).
        # The caller logs the message; the traceback only with LOG_LEVEL=DEBUG
        # (as the CLIs' --verbose), so a command's output stays one line per error.
        hide = _secrets(message)
        if os.environ.get("LOG_LEVEL", "").upper() == "DEBUG":
            sys.stderr.write(redact(traceback.format_exc(), hide))
        error = {"type": type(exc).__name__, "message": redact(str(exc), hide)}
        return {"ok": False, "error": error}
    finally:
        connection.reset()  # the next request starts with nothing attached
    answer["peak_rss_mb"] = status_mb("VmHWM")
    return answer


_PASSWORD = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'"]+)""", re.IGNORECASE)


def _secrets(message: Any) -> list[str]:
    """The secret values a request carries: the S3 secret and session token
    (the catalog's password is found by its `password=` keyword)."""
    try:
        s3 = message["request"]["lake"].get("s3") or {}
        return [str(v) for k in ("secret", "session_token") if (v := s3.get(k))]
    except (TypeError, KeyError, AttributeError):
        return []


def redact(text: str, secrets: list[str]) -> str:
    """`text` without the password of a libpq connection string or any of `secrets`."""
    text = _PASSWORD.sub(r"\1'***'", text)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def status_mb(field: str) -> float:
    """A /proc/self/status size in MB. VmHWM, not getrusage's maxrss: Linux carries
    maxrss over from the parent across fork and exec (the ETL's size, not ours)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def serve(idle_seconds: float, max_rss_mb: float, answers: TextIO) -> int:
    pending = b""
    while True:
        if b"\n" not in pending:
            ready, _, _ = select.select([0], [], [], idle_seconds)
            if not ready:
                answers.write(json.dumps({"idle_exit": True}) + "\n")
                return 0
            chunk = os.read(0, 1 << 20)
            if not chunk:
                return 0
            pending += chunk
            continue
        line, pending = pending.split(b"\n", 1)
        answer = handle(line)
        recycle = status_mb("VmRSS") > max_rss_mb
        if recycle:
            answer["recycled"] = True
        answers.write(json.dumps(answer, default=str) + "\n")
        if recycle:
            return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m analytics_lake", description=__doc__)
    parser.add_argument("mode", choices=["serve"])
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--max-rss-mb", type=float, default=300.0)
    args = parser.parse_args(argv[1:])
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (DuckDB, libraries) must not reach the answer stream
    return serve(args.idle_seconds, args.max_rss_mb, answers)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
