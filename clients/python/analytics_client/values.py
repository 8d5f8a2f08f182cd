"""Exact numbers from JSON answers.

The API sends DECIMAL values as strings and BIGINT/UBIGINT/HUGEINT values as
numbers when they fit in +/-(2^53 - 1), as strings otherwise (UHUGEINT always
as strings). Python's `int` and `Decimal` hold them all exactly, so the
client turns wide-integer columns into `int` and, by default, DECIMAL
columns into `decimal.Decimal` (`decimals="str"` keeps the strings).
Values nested in LIST/STRUCT/MAP columns stay as the API sent them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

__all__ = ["DecimalMode", "is_decimal", "is_wide_integer", "normalize_rows"]

DecimalMode = Literal["decimal", "str"]

_WIDE_INTEGER = re.compile(
    r"^(BIGINT|INT8|INT64|LONG|UBIGINT|UINT64|HUGEINT|INT128|UHUGEINT|UINT128)$", re.I
)
_DECIMAL = re.compile(r"^(DECIMAL|NUMERIC)\b", re.I)


def is_wide_integer(duckdb_type: str) -> bool:
    return bool(_WIDE_INTEGER.match(duckdb_type.strip()))


def is_decimal(duckdb_type: str) -> bool:
    return bool(_DECIMAL.match(duckdb_type.strip()))


def normalize_rows(
    rows: list[dict[str, Any]], columns: list[dict[str, str]], decimals: DecimalMode
) -> list[dict[str, Any]]:
    """Converts in place and returns `rows`."""
    ints = [c["name"] for c in columns if is_wide_integer(c["type"])]
    decs = [c["name"] for c in columns if is_decimal(c["type"])] if decimals == "decimal" else []
    if ints or decs:
        for row in rows:
            for name in ints:
                value = row.get(name)
                if isinstance(value, str):
                    row[name] = int(value)
            for name in decs:
                value = row.get(name)
                if isinstance(value, str):
                    row[name] = Decimal(value)
    return rows
