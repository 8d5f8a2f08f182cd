"""Applying row filters and column policies by rewriting DuckDB's parsed query.

The query (already through the SQL guard) is parsed with `json_serialize_sql`;
every reference to a table the policy restricts, wherever it sits (FROM, JOIN,
CTE bodies, subqueries in any clause, set operations, LATERAL, PIVOT sources,
quoted or `main.`-qualified names), is replaced in the tree by

    (SELECT <visible columns, masked ones masked> FROM main.t AS __rls_t
     WHERE <filter> OFFSET 0) AS <the reference's own alias>

and the tree is turned back into SQL with `json_deserialize_sql`. The caller's
text is never concatenated with anything. `OFFSET 0` is an optimisation fence:
DuckDB does not push the caller's predicates below a LIMIT/OFFSET, so no
caller expression (a failing cast, `error()`) ever sees a filtered-out row.
`SELECT *`, `t.*`, `COLUMNS(...)`, `SELECT t FROM t` and NATURAL/USING joins
therefore see only the visible columns; a hidden column is unknown to DuckDB.

Refused (400, with the code):
- a CTE named like a restricted table or a refused model, or any name, alias
  or parameter starting with `__rls_` (`reserved_name`, `cte_name_not_allowed`);
- a model (view or rollup in the snapshot) built on a restricted table, unless
  the policy gives the model rules of its own (`model_not_allowed`): DuckDB
  would read the table inside the view, past any rewrite.

The result is checked again: the rewritten SQL is parsed and every reference to
a restricted table must be one of the inserted ones, or the query is refused.
A rewrite is a pure function of (SQL, rules, snapshot version) and is cached;
claim values and mask keys are bound parameters, never part of the SQL.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import duckdb

from analytics_shared.manifest import Manifest
from analytics_shared.snapshot_file import quote_ident
from api_service.access.rules import (
    MASK_INNER_PARAM,
    MASK_OUTER_PARAM,
    RESERVED_PREFIX,
    AccessRules,
    TableRule,
    claim_param,
    tree_nodes,
)
from api_service.errors import ColumnNotAllowed, QueryRejected
from api_service.query.sql_guard import parser_connection

__all__ = [
    "QueryAccess",
    "RewrittenQuery",
    "bind",
    "cached_rewrite",
    "column_refusals",
    "refused_models",
    "rewrite",
    "rewrite_and_cache",
]

_ARG_PREFIX = RESERVED_PREFIX + "arg_"


@dataclass(frozen=True)
class QueryAccess:
    """One request's rules and the caller's claims (values bound at run time)."""

    rules: AccessRules
    claims: Mapping[str, Any] = field(compare=False, repr=False)
    mask_keys: Mapping[str, str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class RewrittenQuery:
    sql: str
    claims: tuple[str, ...]  # claims whose values the SQL binds
    masks: bool  # binds the mask keys
    positional: bool  # the caller's ? / $n placeholders became named ones
    hidden: frozenset[str]  # hidden columns of the tables it reads (for the error)
    rules: tuple[TableRule, ...] = ()  # the rules applied (their claims' types: claim_types.py)


def refused_models(rules: AccessRules, manifest: Manifest) -> frozenset[str]:
    """Models that read (through other models too) a restricted table and have
    no rules of their own in the policy."""
    restricted = set(rules.by_table)
    deps = {name: {d.lower() for d in m.depends_on} for name, m in manifest.models.items()}
    refused: set[str] = set()
    for name in deps:
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            for dep in deps.get(current, ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        if seen & restricted and name.lower() not in restricted:
            refused.add(name.lower())
    return frozenset(refused)


def _columns(manifest: Manifest, table: str) -> tuple[str, ...] | None:
    for tables in (manifest.tables, manifest.models):
        for name, info in tables.items():
            if name.lower() == table:
                return tuple(c.name for c in info.columns)
    return None


def _reserved(name: str) -> bool:
    return name.lower().startswith(RESERVED_PREFIX)


def _reserved_name() -> QueryRejected:
    return QueryRejected(
        f"names (aliases, CTEs, parameters) starting with {RESERVED_PREFIX!r} are reserved",
        "reserved_name",
    )


class _Rewriter:
    def __init__(self, rules: AccessRules, manifest: Manifest) -> None:
        self.rules = rules
        self.manifest = manifest
        self.refused = refused_models(rules, manifest)
        self.touched: dict[str, TableRule] = {}
        self.masks = False
        self.positional = False
        self.replaced = 0

    def walk(self, tree: dict[str, Any]) -> None:
        stack: list[Any] = [tree]
        while stack:
            node = stack.pop()
            if isinstance(node, list):
                for i, item in enumerate(node):
                    if self._replace(node, i, item):
                        continue
                    stack.append(item)
                continue
            if not isinstance(node, dict):
                continue
            self._check(node)
            for key, value in node.items():
                if self._replace(node, key, value):
                    continue
                if isinstance(value, dict | list):
                    stack.append(value)

    def _check(self, node: dict[str, Any]) -> None:
        cte_map = node.get("cte_map")
        entries = (cte_map or {}).get("map", [])
        names = [str(e.get("key", "")) for e in entries if isinstance(e, dict)]
        if node.get("type") == "RECURSIVE_CTE_NODE" and node.get("cte_name"):
            names.append(str(node["cte_name"]))
        for name in names:
            if _reserved(name):
                raise _reserved_name()
            if name.lower() in self.rules.by_table or name.lower() in self.refused:
                raise QueryRejected(
                    f"a CTE may not be named {name!r}: that table is restricted for this"
                    " application; choose another name",
                    "cte_name_not_allowed",
                )
        if "sample" in node and _reserved(str(node.get("alias") or "")):
            raise _reserved_name()
        if node.get("class") == "PARAMETER":
            identifier = str(node.get("identifier", ""))
            if _reserved(identifier):
                raise _reserved_name()
            if identifier.isdigit():
                node["identifier"] = _ARG_PREFIX + identifier
                self.positional = True

    def _replace(self, parent: dict[str, Any] | list[Any], key: Any, node: Any) -> bool:
        if not isinstance(node, dict) or node.get("type") != "BASE_TABLE":
            return False
        raw = str(node.get("table_name", ""))
        name = raw.lower()
        if name in self.refused:
            raise QueryRejected(
                f"{name!r} is built on a table this application sees only in part;"
                " query the table itself",
                "model_not_allowed",
            )
        rule = self.rules.by_table.get(name)
        if rule is None:
            return False
        if _reserved(str(node.get("alias") or "")):
            raise _reserved_name()
        columns = _columns(self.manifest, name) if rule.column_restricted else None
        if rule.column_restricted and columns is None:
            raise QueryRejected(f"table {name!r} is not in the current data", "table_not_allowed")
        template = json.loads(_subquery_template(rule, columns))
        template["alias"] = str(node.get("alias") or "") or raw
        template["sample"] = node.get("sample")
        template["column_name_alias"] = node.get("column_name_alias") or []
        parent[key] = template
        self.touched[name] = rule
        self.masks = self.masks or any(m == "hash" for _, m in rule.masked)
        self.replaced += 1
        return True


@functools.lru_cache(maxsize=512)
def _subquery_template(rule: TableRule, columns: tuple[str, ...] | None) -> str:
    """The replacement for one reference (a SUBQUERY table ref), as JSON text."""
    if columns is None:
        items = ["*"]
    else:
        masked = dict(rule.masked)
        hidden = rule.hidden(columns)
        items = []
        for column in columns:
            quoted = quote_ident(column)
            mode = masked.get(column.lower())
            if column.lower() in hidden:
                continue
            if mode == "null":
                items.append(f"CASE WHEN false THEN {quoted} END AS {quoted}")
            elif mode == "hash":
                inner = f"sha256(${MASK_INNER_PARAM} || CAST({quoted} AS VARCHAR))"
                items.append(f"sha256(${MASK_OUTER_PARAM} || {inner}) AS {quoted}")
            else:
                items.append(quoted)
        if not items:
            raise QueryRejected(
                f"no column of {rule.table!r} is visible to this application", "column_not_allowed"
            )
    source = f"main.{quote_ident(rule.table)} AS {quote_ident(RESERVED_PREFIX + rule.table)}"
    barrier = " WHERE true OFFSET 0" if rule.filter_json is not None else ""
    text = f"SELECT * FROM (SELECT {', '.join(items)} FROM {source}{barrier}) AS x"
    tree = _serialize(text)
    ref = tree["statements"][0]["node"]["from_table"]
    if rule.filter_json is not None:
        ref["subquery"]["node"]["where_clause"] = json.loads(rule.filter_json)
    return json.dumps(ref)


def _serialize(sql: str) -> dict[str, Any]:
    [(text,)] = (
        parser_connection().execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()
    )
    tree: dict[str, Any] = json.loads(text)
    if tree.get("error"):
        raise QueryRejected(
            f"query not supported: {tree.get('error_message', 'cannot analyse it')}", "unsupported"
        )
    return tree


def _verify(sql: str, rules: AccessRules, refused: frozenset[str], expected: int) -> None:
    """Every reference to a restricted table in the rewritten SQL is an inserted one."""
    found = 0
    # Inserted subqueries are not walked: the operator's filter may read tables itself.
    for node in tree_nodes(_serialize(sql), _is_inserted):
        if _is_inserted(node):
            found += 1
        elif node.get("type") == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            if name in refused or name in rules.by_table:
                raise _unverifiable()
    if found != expected:
        raise _unverifiable()


def _is_inserted(node: dict[str, Any]) -> bool:
    """A subquery the rewrite inserted: it reads `main.t AS __rls_t` (callers
    cannot use `__rls_` names, so no caller's subquery looks like this)."""
    if node.get("type") != "SUBQUERY":
        return False
    inner = (node.get("subquery") or {}).get("node") or {}
    source = inner.get("from_table") or {}
    name = str(source.get("table_name", "")).lower()
    return (
        source.get("type") == "BASE_TABLE"
        and str(source.get("alias", "")).lower() == RESERVED_PREFIX + name
    )


def _unverifiable() -> QueryRejected:
    return QueryRejected(
        "this query cannot be checked against the application's row and column rules; simplify it",
        "unsupported",
    )


def rewrite(sql: str, rules: AccessRules, manifest: Manifest) -> RewrittenQuery:
    """The SQL with the policy's rules applied (QueryRejected when it cannot be)."""
    tree = _serialize(sql)
    rewriter = _Rewriter(rules, manifest)
    rewriter.walk(tree)
    if rewriter.replaced == 0:
        return RewrittenQuery(sql, (), False, False, frozenset())
    [(rewritten,)] = (
        parser_connection()
        .execute("SELECT json_deserialize_sql(?::VARCHAR)", [json.dumps(tree)])
        .fetchall()
    )
    _verify(rewritten, rules, rewriter.refused, rewriter.replaced)
    claims = tuple(dict.fromkeys(c for r in rewriter.touched.values() for c in r.claims))
    hidden = frozenset(
        c for r in rewriter.touched.values() for c in r.hidden(_columns(manifest, r.table) or ())
    )
    return RewrittenQuery(
        rewritten,
        claims,
        rewriter.masks,
        rewriter.positional,
        hidden,
        tuple(rewriter.touched.values()),
    )


# -- the cache --------------------------------------------------------------------
REWRITE_CACHE_ENTRIES = 1024
_Key = tuple[str, AccessRules, str]
_Outcome = RewrittenQuery | tuple[str, str]
_cache: OrderedDict[_Key, _Outcome] = OrderedDict()
_lock = threading.Lock()


def cached_rewrite(sql: str, rules: AccessRules, manifest: Manifest) -> RewrittenQuery | None:
    """The cached rewrite (QueryRejected for a cached refusal), or None."""
    with _lock:
        outcome = _cache.get((sql, rules, manifest.version))
    if outcome is None or isinstance(outcome, RewrittenQuery):
        return outcome
    raise QueryRejected(outcome[1], outcome[0])


def rewrite_and_cache(sql: str, rules: AccessRules, manifest: Manifest) -> RewrittenQuery:
    key = (sql, rules, manifest.version)
    try:
        outcome: _Outcome = rewrite(sql, rules, manifest)
    except QueryRejected as exc:
        outcome = (exc.code, str(exc))
    with _lock:
        _cache[key] = outcome
        _cache.move_to_end(key)
        while len(_cache) > REWRITE_CACHE_ENTRIES:
            _cache.popitem(last=False)
    if isinstance(outcome, tuple):
        raise QueryRejected(outcome[1], outcome[0])
    return outcome


def bind(
    rewritten: RewrittenQuery,
    params: Any,
    claim_values: Mapping[str, Any],
    mask_keys: Mapping[str, str],
) -> Any:
    """The caller's parameters plus the claim values and mask keys the SQL binds."""
    extra: dict[str, Any] = {claim_param(c): claim_values[c] for c in rewritten.claims}
    if rewritten.masks:
        extra.update(mask_keys)
    if not extra and not rewritten.positional:
        return params
    if isinstance(params, dict) and any(_reserved(k) for k in params):
        raise _reserved_name()
    if isinstance(params, list):
        caller = {f"{_ARG_PREFIX}{i + 1}": v for i, v in enumerate(params)}
    elif isinstance(params, dict):
        caller = {
            (_ARG_PREFIX + k if rewritten.positional and k.isdigit() else k): v
            for k, v in params.items()
        }
    else:
        caller = {}
    return {**caller, **extra}


_MISSING_COLUMN = re.compile(
    r'Referenced column "([^"]+)" not found|does not have a column named "([^"]+)"'
)


@contextmanager
def column_refusals(hidden: frozenset[str]) -> Iterator[None]:
    """DuckDB's 'column not found' becomes `column_not_allowed` when the query
    reads a table with hidden columns, for hidden and non-existent names alike:
    GET /schema does not list hidden columns, so no answer may confirm that one
    exists (a name such as `fraud_flag` can be the secret)."""
    try:
        yield
    except duckdb.BinderException as exc:
        match = _MISSING_COLUMN.search(str(exc))
        name = next((g for g in match.groups() if g), "") if match else ""
        if name and hidden:
            raise ColumnNotAllowed(
                f"column {name!r} does not exist or is not visible to this application"
                " (see GET /schema)"
            ) from None
        raise
