"""Named points where a test can freeze a lake process to kill it there.

`LAKE_PAUSE_AT=<point>:<flag file>` (tests only): on reaching `<point>` the
process creates `<flag file>` and sleeps until it is killed, so a test kills
the ETL at an exact step of the commit instead of at a random time. Unset in
production: `pause_point` then does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["ENV", "pause_point"]

ENV = "LAKE_PAUSE_AT"


def pause_point(name: str) -> None:
    point, _, flag = os.environ.get(ENV, "").partition(":")
    if point != name or not flag:
        return
    Path(flag).write_text(str(os.getpid()))
    while True:  # until the test's SIGKILL
        time.sleep(1)
