"""Deciding whether a caller's SQL may run, using DuckDB's own parser.

A query passes when it is exactly one SELECT (CTEs allowed) whose every table
reference is on the caller's whitelist. The sandboxed connection
(snapshots.open_sandboxed) is the real boundary; this guard gives callers a
clear refusal instead of a permission error, and enforces table policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

__all__ = ["GuardedQuery", "QueryRejected", "check_query"]


class QueryRejected(ValueError):
    """The query is not allowed; the message tells a legitimate user why."""

    def __init__(self, message: str, code: str = "query_rejected") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class GuardedQuery:
    sql: str
    tables: frozenset[str]


# A private in-memory connection used only to parse; it never sees data.
_parser = duckdb.connect(":memory:", config={"enable_external_access": False})


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _cte_names(tree: Any) -> set[str]:
    names: set[str] = set()
    for node in _walk(tree):
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            for entry in cte_map.get("map", []):
                if isinstance(entry, dict) and "key" in entry:
                    names.add(str(entry["key"]).lower())
    return names


def check_query(
    sql: str,
    *,
    allowed_tables: set[str] | None,
    allowed_table_functions: set[str] = frozenset(),  # type: ignore[assignment]
    max_length: int = 20_000,
) -> GuardedQuery:
    """Return the parsed facts of an allowed query, or raise QueryRejected.

    `allowed_tables=None` means any table (used for the operator's named queries).
    """
    if not sql or not sql.strip():
        raise QueryRejected("the query is empty", "empty_query")
    if len(sql) > max_length:
        raise QueryRejected(f"the query is longer than {max_length} characters", "query_too_long")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRejected(f"syntax error: {str(exc).splitlines()[0]}", "syntax_error") from None
    if len(statements) != 1:
        raise QueryRejected("send exactly one SQL statement", "multiple_statements")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        raise QueryRejected(
            f"only SELECT queries are allowed (got {statement.type.name})", "not_a_select"
        )
    row = _parser.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        raise QueryRejected(
            f"query not supported: {tree.get('error_message', 'cannot analyse it')}", "unsupported"
        )
    ctes = _cte_names(tree)
    tables: set[str] = set()
    for node in _walk(tree):
        kind = node.get("type")
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name", "") or "").lower()
            catalog = str(node.get("catalog_name", "") or "").lower()
            if not schema and not catalog and name in ctes:
                continue
            if schema not in ("", "main") or catalog:
                raise QueryRejected(
                    f"table {name!r} is outside the published data", "table_not_allowed"
                )
            if "/" in name or "." in name or "\\" in name:
                raise QueryRejected("reading files is not allowed", "file_access")
            tables.add(name)
        elif kind == "TABLE_FUNCTION":
            function = node.get("function", {})
            fname = (
                str(function.get("function_name", "")).lower() if isinstance(function, dict) else ""
            )
            if fname not in allowed_table_functions:
                raise QueryRejected(
                    f"table function {fname or '?'}() is not allowed", "function_not_allowed"
                )
    if allowed_tables is not None:
        refused = sorted(t for t in tables if t not in allowed_tables)
        if refused:
            raise QueryRejected(
                f"table(s) not allowed for this application: {', '.join(refused)}",
                "table_not_allowed",
            )
    return GuardedQuery(sql=sql, tables=frozenset(tables))
