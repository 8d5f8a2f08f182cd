"""Deciding whether a caller's SQL may run, using DuckDB's own parser.

A query passes when it is exactly one SELECT (CTEs allowed) whose every table
reference is on the caller's whitelist. DuckDB parses the text and serialises
the tree (`json_serialize_sql`); the guard walks that tree and refuses:

- any query node other than SELECT / set operation / CTE (so a DELETE hidden
  in a CTE is refused even though the statement's type is SELECT);
- table references other than tables, joins, subqueries, VALUES and PIVOT
  (DESCRIBE, SHOW, SUMMARIZE are refused: GET /schema describes the data);
- tables outside the main schema, qualified with a catalog, with time travel
  (`AT (...)`), named like a file path (replacement scans), or not on the
  caller's whitelist; DuckDB's own catalog views (duckdb_*, pg_*, ...);
- table functions, unless the policy allows them and they are in
  `SAFE_TABLE_FUNCTIONS` (never readers of files or of other queries);
- scalar functions that read configuration, environment, secrets or session
  state, or write anything (`DENIED_FUNCTIONS`), and schema-qualified calls.

CTE names are resolved with their scope: a CTE hides a table of the same name
only inside the query that defines it, never in a sibling subquery.

The sandboxed connection (snapshots.open_sandboxed) stays the real boundary;
this guard gives callers a clear refusal and enforces the table policy.

A decision is a pure function of (SQL text, allowed tables, allowed table
functions, max length), so `check_query` keeps the last `GUARD_CACHE_ENTRIES`
decisions, refusals included, in an LRU keyed on exactly those (the whole
text, not a digest of it). `cached_decision` answers from that cache alone,
without parsing, so a repeated query needs no thread hop.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb

from api_service.errors import QueryRejected
from api_service.query.bind_size import bound_size, macro_copies, parsed_tokens
from api_service.query.sql_limits import (
    AMPLIFYING_FUNCTIONS,
    DENIED_FUNCTIONS,
    AmplifyBudget,
    GuardLimits,
    check_function,
    check_series_table_function,
)

__all__ = [
    "AMPLIFYING_FUNCTIONS",
    "DENIED_FUNCTIONS",
    "GUARD_CACHE_CHARS",
    "GUARD_CACHE_ENTRIES",
    "SAFE_TABLE_FUNCTIONS",
    "GuardLimits",
    "GuardedQuery",
    "cached_decision",
    "check_query",
    "clear_guard_cache",
    "parser_connection",
]

# Table functions a policy may allow: they compute rows, they read nothing.
SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
_SERIES_TABLE_FUNCTIONS = frozenset({"range", "generate_series"})

_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_PLAIN_TABLE_REFS = frozenset({"JOIN", "SUBQUERY", "EXPRESSION_LIST", "EMPTY", "PIVOT"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYSTEM_TABLE_PREFIXES = ("duckdb_", "pragma_", "sqlite_", "pg_", "information_schema")


@dataclass(frozen=True)
class GuardedQuery:
    sql: str
    tables: frozenset[str]
    parameters: frozenset[str]  # $name / ? placeholders (positional ones as "1", "2", ...)
    fingerprint: str  # same shape, different literals -> same fingerprint


# Private in-memory connections used only to parse; they never see data.
_local = threading.local()


def _parser() -> duckdb.DuckDBPyConnection:
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb.connect(
            ":memory:",
            config={
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
            },
        )
        _local.con = con
    return con


def parser_connection() -> duckdb.DuckDBPyConnection:
    """This thread's private parsing connection (it never sees data)."""
    return _parser()


def _system_views() -> frozenset[str]:
    rows = _parser().execute("SELECT view_name FROM duckdb_views() WHERE internal").fetchall()
    return frozenset(str(name).lower() for (name,) in rows)


_SYSTEM_VIEWS = _system_views()
_MACRO_COPIES = macro_copies(_parser())


def _parse_tree(sql: str) -> dict[str, Any]:
    con = _parser()
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRejected(f"syntax error: {str(exc).splitlines()[0]}", "syntax_error") from None
    if len(statements) != 1:
        raise QueryRejected(
            f"send exactly one SQL statement (got {len(statements)})", "multiple_statements"
        )
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        raise QueryRejected(
            f"only SELECT queries are allowed (got {statement.type.name})", "not_a_select"
        )
    [(text,)] = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()
    try:
        tree = json.loads(text)
    except RecursionError:
        raise QueryRejected("the query is nested too deeply", "query_too_complex") from None
    if not isinstance(tree, dict) or tree.get("error"):
        message = tree.get("error_message", "cannot analyse it") if isinstance(tree, dict) else ""
        raise QueryRejected(f"query not supported: {message}", "unsupported")
    return tree


_Entry = tuple[Any, frozenset[str], int, int]  # node, CTE scope, depth, query level


class _Walker:
    def __init__(
        self,
        allowed_tables: set[str] | None,
        allowed_table_functions: Iterable[str],
        limits: GuardLimits,
    ) -> None:
        self.allowed_tables = allowed_tables
        self.limits = limits
        self.counts = {"table_references": 0, "joins": 0, "set_operations": 0}
        self.expression_nodes = 0
        self.budget = AmplifyBudget()
        self._table_function_calls: set[int] = set()  # checked as table functions
        self.allowed_table_functions = {f.lower() for f in allowed_table_functions}
        self.tables: set[str] = set()
        self.parameters: set[str] = set()
        self.shape = hashlib.sha256()

    def walk(self, tree: dict[str, Any]) -> None:
        # Iterative (an explicit stack): a deeply nested query cannot exhaust Python's stack.
        # Each entry carries its CTE scope, its expression depth and its query
        # level (the id of the SELECT node it belongs to; see AmplifyBudget).
        stack: list[_Entry] = [(tree, frozenset(), 0, 0)]
        while stack:
            node, scope, depth, level = stack.pop()
            if isinstance(node, list):
                stack.extend((item, scope, depth, level) for item in reversed(node))
                continue
            if not isinstance(node, dict):
                continue
            if isinstance(node.get("class"), str) or str(node.get("type", "")).endswith("_NODE"):
                depth += 1
                if depth > self.limits.expression_depth:
                    raise _too_complex(f"nested deeper than {self.limits.expression_depth} levels")
            scope = self._visit(node, scope, depth, level, stack)
            if str(node.get("type", "")).endswith("_NODE"):
                level = id(node)
            stack.extend(
                (value, scope, depth, level)
                for key, value in reversed(node.items())
                if key != "cte_map" and isinstance(value, dict | list)
            )

    def _count(self, what: str) -> None:
        self.counts[what] += 1
        limit = getattr(self.limits, what)
        if self.counts[what] > limit:
            raise _too_complex(f"more than {limit} {what.replace('_', ' ')}")

    def _visit(
        self,
        node: dict[str, Any],
        scope: frozenset[str],
        depth: int,
        level: int,
        stack: list[_Entry],
    ) -> frozenset[str]:
        kind = node.get("type")
        cls = node.get("class")
        if isinstance(cls, str):
            self._expression(node, cls, level)
            return scope
        if not isinstance(kind, str):
            return scope
        if kind.endswith("_NODE"):
            return self._query_node(node, kind, scope, depth, stack)
        if "alias" in node and "sample" in node:
            self._table_ref(node, kind, scope)
        return scope

    def _query_node(
        self,
        node: dict[str, Any],
        kind: str,
        scope: frozenset[str],
        depth: int,
        stack: list[_Entry],
    ) -> frozenset[str]:
        if kind not in _QUERY_NODES:
            what = kind.removesuffix("_QUERY_NODE").removesuffix("_NODE")
            raise QueryRejected(
                f"only SELECT queries are allowed (found {what} inside the query)", "not_a_select"
            )
        self.shape.update(kind.encode())
        if kind in ("SET_OPERATION_NODE", "RECURSIVE_CTE_NODE"):
            # A chain of UNIONs may be one node with n children: n - 1 operations.
            children = node.get("children")
            n = len(children) - 1 if isinstance(children, list) and len(children) > 2 else 1
            for _ in range(n):
                self._count("set_operations")
        if kind == "RECURSIVE_CTE_NODE" and isinstance(node.get("cte_name"), str):
            scope = scope | {node["cte_name"].lower()}
        cte_map = node.get("cte_map")
        entries = cte_map.get("map", []) if isinstance(cte_map, dict) else []
        # A CTE sees the ones defined before it; the query body sees them all.
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            name = str(entry.get("key", "")).lower()
            stack.append((entry.get("value"), scope, depth, id(node)))
            scope = scope | {name}
        return scope

    def _expression(self, node: dict[str, Any], cls: str, level: int) -> None:
        self.shape.update(cls.encode())
        self.expression_nodes += 1
        if self.expression_nodes > self.limits.expression_nodes:
            raise _too_complex(f"more than {self.limits.expression_nodes} expression nodes")
        if cls == "PARAMETER":
            self.parameters.add(str(node.get("identifier", "")))
        elif cls == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            self.shape.update(name.encode())
            if node.get("schema") or node.get("catalog"):
                raise QueryRejected(
                    f"call {name}() without a schema or catalog prefix", "function_not_allowed"
                )
            if id(node) not in self._table_function_calls:
                check_function(name, node, self.budget, level)

    def _table_ref(self, node: dict[str, Any], kind: str, scope: frozenset[str]) -> None:
        self.shape.update(kind.encode())
        if kind in ("BASE_TABLE", "TABLE_FUNCTION"):
            self._count("table_references")
        elif kind == "JOIN":
            self._count("joins")
        if kind == "BASE_TABLE":
            self._base_table(node, scope)
        elif kind == "TABLE_FUNCTION":
            function = node.get("function")
            function = function if isinstance(function, dict) else {}
            self._table_function_calls.add(id(function))
            name = str(function.get("function_name", "")).lower()
            if function.get("schema") or function.get("catalog"):
                raise QueryRejected(
                    f"call {name}() without a schema or catalog prefix", "function_not_allowed"
                )
            if name not in self.allowed_table_functions or name not in SAFE_TABLE_FUNCTIONS:
                raise QueryRejected(
                    f"table function {name or '?'}() is not allowed;"
                    " query the published tables (see GET /schema)",
                    "function_not_allowed",
                )
            if name in _SERIES_TABLE_FUNCTIONS:
                check_series_table_function(name, function)
        elif kind == "SHOW_REF":
            raise QueryRejected(
                "DESCRIBE, SHOW and SUMMARIZE are not supported; GET /schema lists the columns",
                "unsupported",
            )
        elif kind not in _PLAIN_TABLE_REFS:
            raise QueryRejected(f"query not supported ({kind.lower()})", "unsupported")

    def _base_table(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        raw = str(node.get("table_name", ""))
        name = raw.lower()
        schema = str(node.get("schema_name", "") or "").lower()
        catalog = str(node.get("catalog_name", "") or "").lower()
        self.shape.update(name.encode())
        if not _IDENTIFIER.fullmatch(raw):
            if any(c in raw for c in "/\\.:~") or raw.startswith("$"):
                raise QueryRejected(
                    "reading files is not allowed; query the published tables", "file_access"
                )
            raise QueryRejected(f"table name {raw!r} is not allowed", "table_not_allowed")
        if node.get("at_clause"):
            raise QueryRejected("time travel (AT ...) is not supported", "unsupported")
        if catalog or schema not in ("", "main"):
            raise QueryRejected(
                f"table {name!r} is outside the published data; use unqualified table names",
                "table_not_allowed",
            )
        if not schema and name in scope:
            return  # a CTE in scope, not a table
        if name in _SYSTEM_VIEWS or name.startswith(_SYSTEM_TABLE_PREFIXES):
            raise QueryRejected(f"table {name!r} is not allowed", "table_not_allowed")
        if self.allowed_tables is not None and name not in self.allowed_tables:
            raise QueryRejected(
                f"table {name!r} is not allowed for this application (see GET /schema)",
                "table_not_allowed",
            )
        self.tables.add(name)


# -- the decision cache -----------------------------------------------------
GUARD_CACHE_ENTRIES = 1024
GUARD_CACHE_CHARS = 4_000_000  # total SQL text held (keys), so long queries cannot bloat it

_Key = tuple[str, frozenset[str] | None, frozenset[str], int, GuardLimits]
_Decision = GuardedQuery | tuple[str, str]  # allowed, or a refusal's (code, message)


class _DecisionCache:
    """A thread-safe LRU of guard decisions, bounded by entries and by SQL characters."""

    def __init__(self, entries: int, chars: int) -> None:
        self.entries = entries
        self.chars = chars
        self._data: OrderedDict[_Key, _Decision] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, key: _Key) -> _Decision | None:
        with self._lock:
            decision = self._data.get(key)
            if decision is not None:
                self._data.move_to_end(key)
            return decision

    def put(self, key: _Key, decision: _Decision) -> None:
        size = len(key[0])
        if size > self.chars // 4:
            return
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return
            self._data[key] = decision
            self._held += size
            while len(self._data) > self.entries or self._held > self.chars:
                old, _ = self._data.popitem(last=False)
                self._held -= len(old[0])

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._held = 0

    def __len__(self) -> int:
        return len(self._data)


_decisions = _DecisionCache(GUARD_CACHE_ENTRIES, GUARD_CACHE_CHARS)
_DEFAULT_LIMITS = GuardLimits()


def _too_complex(what: str) -> QueryRejected:
    return QueryRejected(
        f"the query is too complex ({what}); split it or simplify it", "query_too_complex"
    )


def clear_guard_cache() -> None:
    _decisions.clear()


def _key(
    sql: str,
    allowed_tables: Iterable[str] | None,
    allowed_table_functions: Iterable[str],
    max_length: int,
    limits: GuardLimits,
) -> _Key:
    tables = frozenset(t.lower() for t in allowed_tables) if allowed_tables is not None else None
    functions = frozenset(f.lower() for f in allowed_table_functions)
    return (sql, tables, functions, max_length, limits)


def _replay(decision: _Decision) -> GuardedQuery:
    if isinstance(decision, GuardedQuery):
        return decision
    code, message = decision
    raise QueryRejected(message, code)


def cached_decision(
    sql: str,
    *,
    allowed_tables: Iterable[str] | None,
    allowed_table_functions: Iterable[str] = (),
    max_length: int = 20_000,
    limits: GuardLimits = _DEFAULT_LIMITS,
) -> GuardedQuery | None:
    """The cached decision, without parsing: the facts of an allowed query,
    QueryRejected raised for a refused one, or None when it is not cached."""
    key = _key(sql, allowed_tables, allowed_table_functions, max_length, limits)
    decision = _decisions.get(key)
    return None if decision is None else _replay(decision)


def check_query(
    sql: str,
    *,
    allowed_tables: Iterable[str] | None,
    allowed_table_functions: Iterable[str] = (),
    max_length: int = 20_000,
    limits: GuardLimits = _DEFAULT_LIMITS,
) -> GuardedQuery:
    """Return the parsed facts of an allowed query, or raise QueryRejected.

    `allowed_tables=None` means any table of the snapshot (policies with "*" and
    the operator's named queries); DuckDB's catalog views stay refused.
    Decisions are cached (see the module docstring).
    """
    key = _key(sql, allowed_tables, allowed_table_functions, max_length, limits)
    decision = _decisions.get(key)
    if decision is not None:
        return _replay(decision)
    try:
        guarded = _check(sql, key[1], key[2], max_length, limits)
    except QueryRejected as exc:
        _decisions.put(key, (exc.code, str(exc)))
        raise
    _decisions.put(key, guarded)
    return guarded


def _check(
    sql: str,
    allowed_tables: frozenset[str] | None,
    allowed_table_functions: frozenset[str],
    max_length: int,
    limits: GuardLimits,
) -> GuardedQuery:
    if not sql or not sql.strip():
        raise QueryRejected("the query is empty", "empty_query")
    if len(sql) > max_length:
        raise QueryRejected(f"the query is longer than {max_length} characters", "query_too_long")
    if "\x00" in sql:
        raise QueryRejected("the query contains a NUL character", "syntax_error")
    # The parser copies a simple CASE's operand into each WHEN: nested ones
    # grow exponentially inside DuckDB's parser, before any tree exists.
    if parsed_tokens(sql) > 2 * max_length:
        raise _too_complex("nested simple CASE expressions copy their operand into each WHEN")
    tree = _parse_tree(sql)
    walker = _Walker(
        set(allowed_tables) if allowed_tables is not None else None,
        allowed_table_functions,
        limits,
    )
    walker.walk(tree)
    # What the binder copies (reused aliases, macro arguments, NOT MATERIALIZED
    # CTEs, `*`) counts too: binding cannot be interrupted (bind_size.py).
    try:
        size, inlined_tables = bound_size(tree, _MACRO_COPIES)
    except RecursionError:
        raise _too_complex("nested too deeply") from None
    if walker.counts["table_references"] + inlined_tables > limits.table_references:
        raise _too_complex(
            f"more than {limits.table_references} table references once its NOT MATERIALIZED"
            " CTEs are copied into each use; drop NOT MATERIALIZED"
        )
    if size > limits.expression_nodes:
        raise _too_complex(
            f"more than {limits.expression_nodes} expression nodes and columns once DuckDB"
            " expands it: reused aliases, nullif()-like macros, NOT MATERIALIZED CTEs"
            " used more than once or * over ever wider subqueries copy their expressions"
        )
    return GuardedQuery(
        sql=sql,
        tables=frozenset(walker.tables),
        parameters=frozenset(walker.parameters),
        fingerprint=walker.shape.hexdigest()[:16],
    )
