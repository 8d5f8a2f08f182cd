"""JSON responses encoded with orjson (fast; datetimes and UUIDs native)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
from fastapi.responses import Response

__all__ = ["json_bytes", "json_response"]


def _default(value: Any) -> Any:
    # Decimals travel as strings so no precision is lost in JSON.
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def json_bytes(body: Any) -> bytes:
    return orjson.dumps(body, default=_default, option=orjson.OPT_NON_STR_KEYS)


def json_response(
    body: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        json_bytes(body), status_code=status_code, headers=headers, media_type="application/json"
    )
