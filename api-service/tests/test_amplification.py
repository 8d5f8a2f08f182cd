"""Queries that build huge values from small ones, against the API in a 512 MB
memory cgroup as a small container runs it (one worker: the
memory budget sizes 512 MB so) (issue 12, review 2).

Nested CTEs each doubling a string (`s || s`, `concat(s, s, s, s)`, lists,
`format`) made DuckDB allocate GBs outside its memory_limit, within a single
vector and before it checks for an interrupt: the kernel's OOM killer took the
worker. Each shape must now be a clean 400 in the error shape, with no OOM
kill, and the server still answering afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from testsupport.api_server import ApiServer
from testsupport.cgroup import MemoryCgroup, memory_cgroup_unavailable
from testsupport.serving import published_inventory_env

MEMORY_LIMIT = 512 * 2**20


def _chain(start: str, step: str, levels: int, final: str = "length(s)") -> str:
    ctes = [f"a0 AS (SELECT {start} AS s FROM inventory)"]
    ctes += [f"a{i} AS (SELECT {step} AS s FROM a{i - 1})" for i in range(1, levels + 1)]
    return f"WITH {', '.join(ctes)} SELECT sum({final}) AS n FROM a{levels}"


SHAPES = {
    "repeat_then_double": _chain("repeat(warehouse, 800)", "s || s", 12),
    "double_a_column": _chain("warehouse", "s || s", 20),
    "concat_four": _chain("warehouse", "concat(s, s, s, s)", 10),
    "list_concat": _chain("[warehouse]", "list_concat(s, s)", 22, "len(s)"),
    "list_value": _chain("warehouse", "[s, s]", 22, "len(flatten(s))"),
    "format": _chain("warehouse", "format('{}{}', s, s)", 20),
    "replace_by_itself": _chain("repeat(warehouse, 100)", "replace(s, 'A', s)", 3),
    "self_join_double": (
        "WITH a AS (SELECT repeat(warehouse, 2000) AS s FROM inventory),"
        " b AS (SELECT x.s || y.s AS s FROM a x, a y),"
        " c AS (SELECT x.s || y.s AS s FROM b x, b y)"
        " SELECT sum(length(s)) FROM c"
    ),
}


# Values copied many times over: a repeated or lambda-copied value read from a
# parameter or the data (a 200 KB parameter, a 30 KB aggregate), one value
# of GBs (review 3: each took the worker down in a 1.5 GB container).
BIG = "x" * 200_000
COPIES = {
    "repeat_a_parameter": ("SELECT length(repeat($s, 10000)) AS n", {"s": BIG}),
    "comprehension_copies_a_parameter": ("SELECT len([$s FOR x IN range(9000)]) AS n", {"s": BIG}),
    "lambda_copies_a_parameter": (
        "SELECT len(list_transform(string_split($s, ''), lambda x: $s)) AS n",
        {"s": BIG},
    ),
    "lambda_copies_a_column": (
        "WITH a AS (SELECT string_agg(warehouse || CAST(id AS VARCHAR), '') AS s FROM inventory)"
        " SELECT len(list_transform(string_split(s, ''), lambda x: s)) AS n FROM a",
        None,
    ),
}
SHAPES.update({name: sql for name, (sql, _) in COPIES.items()})
PARAMS = {name: params for name, (_, params) in COPIES.items() if params}

REFUSALS = {(400, "function_not_allowed"), (503, "busy")}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, issuer
) -> Iterator[tuple[ApiServer, MemoryCgroup]]:
    reason = memory_cgroup_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("amplification")
    env = published_inventory_env(root, issuer, QUERY_TIMEOUT_SECONDS="10", DUCKDB_THREADS="1")
    with MemoryCgroup(MEMORY_LIMIT) as cgroup:
        api = ApiServer(env, workers=1, log_path=root / "api.log", popen=cgroup.popen)
        api.start(ready_timeout=90)
        try:
            yield api, cgroup
        finally:
            api.stop()


@pytest.mark.parametrize("name", list(SHAPES))
def test_an_amplifying_chain_is_refused_and_the_container_survives(served, issuer, name):
    api, cgroup = served
    headers = {"Authorization": f"Bearer {issuer.mint(sub='amplifier')}"}
    body = {"sql": SHAPES[name], **({"params": PARAMS[name]} if name in PARAMS else {})}
    r = httpx.post(api.url + "/query", json=body, headers=headers, timeout=60)
    assert r.json()["success"] is False, r.text
    # Refused by the guard; or (a self-join the guard cannot size) stopped by
    # DuckDB's memory limit: "busy", retry later. Never a killed worker.
    assert (r.status_code, r.json()["error"]["code"]) in REFUSALS, r.text
    assert cgroup.usage().oom_kills == 0
    ok = httpx.post(
        api.url + "/query", json={"sql": "SELECT count(*) AS n FROM inventory"}, headers=headers
    )
    assert ok.status_code == 200 and ok.json()["data"] == [{"n": 3000}]
