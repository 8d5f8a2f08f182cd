"""Runs the TypeScript client's own checks: its type tests (tsc) and its Node
test suite (`node --test`), which starts a real API through
testsupport.client_api with this interpreter."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testsupport.processes import stop_process

TS = Path(__file__).resolve().parents[2] / "clients" / "typescript"


@pytest.fixture(scope="module")
def npm() -> str:
    npm = shutil.which("npm")
    if npm is None or not (TS / "node_modules" / ".bin" / "tsc").exists():
        pytest.skip("npm and clients/typescript/node_modules are needed (make test installs them)")
    subprocess.run([npm, "run", "--silent", "build"], cwd=TS, check=True, timeout=120)
    return npm


def test_public_types_compile_and_refuse_misuse(npm):
    run = subprocess.run(
        [npm, "run", "--silent", "typecheck"], cwd=TS, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_node_suite_passes_against_a_real_api(npm):
    # Its own process group: on a timeout npm, node and the API helper it
    # started all go, not just npm.
    proc = subprocess.Popen(
        [npm, "test", "--silent"],
        cwd=TS,
        env={**os.environ, "ANALYTICS_TEST_PYTHON": sys.executable},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=280)
    finally:
        stop_process(proc, group=True)
    run = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    summary = dict(re.findall(r"^# (pass|fail|cancelled) (\d+)$", run.stdout, re.M))
    assert run.returncode == 0 and summary.get("fail") == "0", run.stdout[-4000:] + run.stderr
    assert int(summary["pass"]) >= 20, summary
    assert summary.get("cancelled") == "0", summary
