"""Running `analytics-etl` / `analytics-api` as an operator does, and judging
what an error looks like: exactly one line on stderr, the documented exit
code, no traceback, never the secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["BIN", "CONFIG", "PASSWORD", "RUNTIME", "assert_one_line", "run_cli"]

BIN = Path(sys.executable).parent
# The secret every bad-settings test plants; it must never be printed.
PASSWORD = "s3cr3t-Pa55word"
CONFIG, RUNTIME = 2, 1


def run_cli(
    argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command with this environment minus the identity and S3 settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH0_", "S3_", "AWS_"))}
    return subprocess.run(
        argv, env={**base, **env}, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """The one stderr line, after checking it is alone, clean and names each of `names`."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]
