"""Checking the values a caller sends for `$name`/`?` placeholders of ad-hoc SQL.

Runs before anything is derived from them (the result cache key, the ETag,
DuckDB's binding): integers must fit 64 bits (signed, or unsigned for
positive values), numbers must be finite, and lists/objects may nest at most
`MAX_PARAM_DEPTH` levels. A bad value is a 422 `invalid_parameters`, never a 500.
"""

from __future__ import annotations

import math
from typing import Any

from api_service.errors import ParameterError

__all__ = ["MAX_PARAM_DEPTH", "validate_params"]

MAX_PARAM_DEPTH = 8
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def validate_params(params: dict[str, Any] | list[Any] | None) -> None:
    if params is None:
        return
    # Iterative: a deeply nested value cannot exhaust the stack here.
    stack: list[tuple[str, Any, int]] = [("params", params, 0)]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise ParameterError(f"{where} does not fit a 64-bit integer")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ParameterError(f"{where} must be a finite number")
        elif isinstance(value, list | dict):
            if depth >= MAX_PARAM_DEPTH:
                raise ParameterError(f"{where} nests deeper than {MAX_PARAM_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((f"{where}[{key!r}]", item, depth + 1) for key, item in items)
        else:
            raise ParameterError(f"{where} has an unsupported type")
