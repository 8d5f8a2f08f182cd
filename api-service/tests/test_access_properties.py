"""Property: any SELECT over the snapshot's tables is refused, or answered with
exactly what the caller may see.

Hypothesis writes SELECTs over `orders`, `customers` and `products` (joins,
filters, aggregates, IN/EXISTS/scalar subqueries, CTEs, set operations), now
and then naming a hidden column. For each, the API (policy `shop`, customer 7)
either refuses it in the error shape, or answers rows equal to the `Oracle`'s
for the same SQL (the oracle holds only the permitted rows and columns), and
no raw value of a hidden or masked column appears anywhere in the answer.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from testsupport.access_data import (
    CLAIM,
    Oracle,
    arrow_rows,
    shop_env,
    shop_rows,
)
from testsupport.api_app import make_app_client

ME = 7
# Visible integer-ish columns per alias, hidden ones, and text columns.
INTS = {"o": ["id", "customer_id"], "c": ["id"], "p": ["id"]}
OTHERS = {"o": ["status", "total_amount", "note"], "c": ["name", "email", "region"], "p": ["name"]}
HIDDEN = {"o": ["margin"], "c": ["api_secret"], "p": []}
TABLE = {"o": "orders", "c": "customers", "p": "products"}
REFUSAL_CODES = {"column_not_allowed", "query_error", "query_too_complex", "unsupported"}


@pytest.fixture(scope="module")
def api(tmp_path_factory, issuer) -> Iterator[httpx.Client]:
    with make_app_client(shop_env(tmp_path_factory.mktemp("shop-props"), issuer)) as client:
        yield client


@pytest.fixture(scope="module")
def headers(issuer) -> dict[str, str]:
    token = issuer.mint(sub="prop-customer", azp="shop-app", **{CLAIM: ME})
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def secrets() -> list[str]:
    """Raw values that must never appear: hidden columns and unmasked emails,
    of every customer (the caller's own included: its email is masked)."""
    rows = shop_rows()
    return [c["api_secret"] for c in rows["customers"]] + [c["email"] for c in rows["customers"]]


aliases = st.sampled_from(["o", "c", "p"])


@st.composite
def column(draw, alias: str, ints_only: bool = False) -> str:
    pool = list(INTS[alias])
    if not ints_only:
        pool += OTHERS[alias]
    if HIDDEN[alias] and draw(st.integers(0, 9)) == 0:
        pool = HIDDEN[alias]  # now and then, try a hidden one
    return f"{alias}.{draw(st.sampled_from(pool))}"


@st.composite
def predicate(draw, alias: str, depth: int = 0) -> str:
    kind = draw(st.integers(0, 5 if depth == 0 else 2))
    col = draw(column(alias, ints_only=True))
    if kind == 0:
        return f"{col} {draw(st.sampled_from(['=', '<', '>', '<>']))} {draw(st.integers(0, 40))}"
    if kind == 1:
        return f"{col} BETWEEN {draw(st.integers(0, 20))} AND {draw(st.integers(20, 700))}"
    if kind == 2:
        return f"{draw(column(alias))} IS NOT NULL"
    inner = draw(aliases)
    sub = f"SELECT {draw(column(inner, ints_only=True))} FROM {TABLE[inner]} {inner}"
    if kind == 3:
        return f"{col} IN ({sub})"
    if kind == 4:
        return f"EXISTS ({sub} WHERE {draw(predicate(inner, depth + 1))})"
    return (
        f"{col} <= (SELECT max({draw(column(inner, ints_only=True))}) FROM {TABLE[inner]} {inner})"
    )


@st.composite
def select(draw, single_int: bool = False) -> str:
    alias = draw(aliases)
    source = f"{TABLE[alias]} {alias}"
    where = " AND ".join(draw(st.lists(predicate(alias), max_size=2))) or "true"
    join = draw(st.integers(0, 3))
    if join == 0 and alias == "o":
        source += " JOIN customers c ON c.id = o.customer_id"
    elif join == 1 and alias != "p":
        source += " LEFT JOIN products p ON p.id = " + ("o.customer_id" if alias == "o" else "c.id")
    if single_int:
        return f"SELECT {draw(column(alias, ints_only=True))} AS v FROM {source} WHERE {where}"
    shape = draw(st.integers(0, 3))
    if shape == 0:  # aggregate
        group = draw(column(alias))
        agg = draw(st.sampled_from(["count(*)", f"max({group})", f"min({group})"]))
        return f"SELECT {group} AS g, {agg} AS a FROM {source} WHERE {where} GROUP BY {group}"
    if shape == 1:
        return f"SELECT * FROM {source} WHERE {where}"
    if shape == 2:
        return f"SELECT {alias}.* FROM {source} WHERE {where}"
    columns = draw(st.lists(column(alias), min_size=1, max_size=3, unique=True))
    return f"SELECT {', '.join(columns)} FROM {source} WHERE {where}"


@st.composite
def query(draw) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(select())
    if kind == 1:
        op = draw(st.sampled_from(["UNION", "UNION ALL", "EXCEPT", "INTERSECT"]))
        return f"{draw(select(single_int=True))} {op} {draw(select(single_int=True))}"
    if kind == 2:
        return f"WITH q AS ({draw(select())}) SELECT * FROM q"
    return f"SELECT count(*) AS n FROM ({draw(select())}) AS s"


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sql=query())
def test_any_select_is_refused_or_shows_only_what_the_caller_may_see(api, headers, secrets, sql):
    response = api.post("/query", json={"sql": sql, "format": "arrow"}, headers=headers)
    if response.status_code != 200:
        error = response.json()["error"]
        assert response.status_code in (400, 403), response.text
        assert error["code"] in REFUSAL_CODES, response.text
        assert not any(s in response.text for s in secrets)
        event(f"refused: {error['code']}")
        return
    event("answered")
    body = response.content
    assert not any(s.encode() in body for s in secrets), sql
    expected = _oracle().rows(sql)
    got = arrow_rows(body)
    assert sorted(map(repr, got)) == sorted(map(repr, expected)), sql


_ORACLE: list[Oracle] = []


def _oracle() -> Oracle:
    if not _ORACLE:
        _ORACLE.append(Oracle(ME))
    return _ORACLE[0]
