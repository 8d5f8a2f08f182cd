"""Walking DuckDB's serialised parse trees (`json_serialize_sql`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["tree_nodes"]


def tree_nodes(
    tree: Any, prune: Callable[[dict[str, Any]], bool] = lambda _: False
) -> Iterator[dict[str, Any]]:
    """Every object of a json_serialize_sql tree (an explicit stack: deep trees
    cannot exhaust Python's); below a node for which `prune` is true, none."""
    stack = [tree]
    while stack:
        current = stack.pop()
        if isinstance(current, list):
            stack.extend(current)
            continue
        if not isinstance(current, dict):
            continue
        yield current
        if not prune(current):
            stack.extend(v for v in current.values() if isinstance(v, dict | list))
