"""JSON responses encoded with orjson (fast; datetimes and UUIDs native), and
the br/gzip compression of large text bodies."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import brotli
import orjson
from fastapi.responses import Response

from api_service.http.negotiation import weighted_values

__all__ = [
    "StreamCompressor",
    "accepted_encoding",
    "compress",
    "json_bytes",
    "json_response",
]


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


# -- compression ------------------------------------------------------------
def accepted_encoding(accept_encoding: str | None) -> str | None:
    """'br' or 'gzip' when the client accepts it (br preferred), else None."""
    offered = dict(weighted_values(accept_encoding))
    for name in ("br", "gzip"):
        if offered.get(name, offered.get("*", 0.0)) > 0:
            return name
    return None


def compress(body: bytes, encoding: str) -> bytes:
    # Levels chosen for speed: most of the gain at a fraction of the CPU.
    if encoding == "br":
        return brotli.compress(body, quality=4)
    return gzip.compress(body, compresslevel=5, mtime=0)


class StreamCompressor:
    """Incremental br/gzip for streamed bodies."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._br = brotli.Compressor(quality=4) if encoding == "br" else None
        self._gz = zlib.compressobj(5, zlib.DEFLATED, 31) if encoding != "br" else None

    def feed(self, chunk: bytes) -> bytes:
        if self._br is not None:
            return bytes(self._br.process(chunk))
        assert self._gz is not None
        return self._gz.compress(chunk)

    def finish(self) -> bytes:
        if self._br is not None:
            return bytes(self._br.finish())
        assert self._gz is not None
        return self._gz.flush()
