"""`python -m analytics_lake <command>`: JSON request on stdin, JSON answer on stdout.

Exit status 0 with {"ok": true, ...} on success; 3 with
{"ok": false, "error": {"type", "message"}} when the command failed.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any

from analytics_lake import history, publish, replica

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


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        print(
            f"usage: python -m analytics_lake {{{'|'.join(COMMANDS)}}} < request.json",
            file=sys.stderr,
        )
        return 2
    try:
        request = json.load(sys.stdin)
        answer = {"ok": True, **COMMANDS[argv[1]](request)}
    except Exception as exc:  # the caller decides; the message names the cause
        traceback.print_exc(file=sys.stderr)
        answer = {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        print(json.dumps(answer, default=str))
        return 3
    # Each call is one process: its peak RSS is the lake side's memory cost.
    answer["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(answer, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
