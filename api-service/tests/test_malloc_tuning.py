"""Large response bodies reuse heap memory instead of faulting in fresh pages."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from api_service.ops.malloc_tuning import retain_freed_memory

# Encodes the same 10,000-row JSON body as GET /query would, 60 times, and
# prints the minor page faults of the last 60 bodies.
PROBE = """
import json, resource, sys
import duckdb
from api_service.query import encodings
from api_service.ops.malloc_tuning import retain_freed_memory
from api_service.query.executor import _capped_table, _relation

tuned = retain_freed_memory() if sys.argv[1] == "tuned" else False
con = duckdb.connect()
con.execute(
    "CREATE TABLE t AS SELECT i AS id, 'AMS-' || (i % 5) AS warehouse, i % 1000 AS quantity,"
    " TIMESTAMP '2026-01-01' + to_seconds(i) AS updated_at FROM range(100000) r(i)"
)
faults = []
for n in range(80):
    relation, columns = _relation(con.cursor(), f"SELECT * FROM t WHERE id >= {n} LIMIT 10000", None)
    table = _capped_table(relation, 10_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    body = encodings.json_body(
        table, columns, compact=False, truncated=False, data_version="v", execution_time_ms=1.0
    )
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del body
print(json.dumps({"tuned": tuned, "faults": sum(faults[20:])}))
"""


def probe(mode: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_large_json_bodies_stop_faulting_in_fresh_pages():
    plain, tuned = probe("plain"), probe("tuned")
    assert tuned["tuned"] is True
    # A body is ~200 pages: glibc maps and unmaps such blocks per response by
    # default (thousands of faults over 60 bodies); with the thresholds set the
    # heap keeps them for the next response (a few dozen at most).
    plain_faults, tuned_faults = int(str(plain["faults"])), int(str(tuned["faults"]))
    assert plain_faults > 1000, plain
    assert tuned_faults * 10 < plain_faults, (plain, tuned)


def test_operator_environment_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert retain_freed_memory() is False
