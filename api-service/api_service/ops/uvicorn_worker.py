"""The Gunicorn worker: Uvicorn with request-line and header limits enforced
while the request head is still arriving, before any body is read.

Uvicorn's httptools protocol accumulates a request line or header value
by concatenating bytes as they arrive, so an unauthenticated client that
streams one huge header slowly costs the event loop time that grows with the
square of its size (a 32 MiB header: seconds per connection; a few of them
stall every request of the worker and get it killed). Gunicorn's own limits
(`limit_request_line`, `limit_request_fields`, `limit_request_field_size`,
set from LIMIT_REQUEST_* in gunicorn_conf.py) are not applied by Uvicorn
workers; this worker applies them:

- bytes received while a request head is incomplete are counted before they
  reach the parser; past `line + fields * field_size` the connection is
  answered 431 and closed, so the parser never holds more than that;
- a request line longer than `limit_request_line`, more than
  `limit_request_fields` headers, or one header line longer than
  `limit_request_field_size` is answered 431 as well.

The 431 is in the API's error shape (JSON, code `request_header_too_large`,
`Connection: close`); no route ran, so it carries no request id. So is the
400 for a request the parser cannot read (code `bad_request`): a request
smuggling attempt with both Content-Length and Transfer-Encoding, a bad
chunk size, a malformed request line.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from api_service.errors import RequestHeaderTooLarge

__all__ = ["BoundedHttpToolsProtocol", "BoundedUvicornWorker"]


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_line: ClassVar[int] = 8190
    max_fields: ClassVar[int] = 100
    max_field_size: ClassVar[int] = 8190

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._url_bytes = 0
        self._fields = 0
        self._refused = False

    @classmethod
    def max_head(cls) -> int:
        return cls.max_line + cls.max_fields * (cls.max_field_size + 2) + 4

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head():
                self._refuse("the request head is too large")
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._fields = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.max_line:
            self._refuse("the request line is too long")
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.max_fields:
            self._refuse("too many header fields")
            return
        if len(name) + len(value) + 2 > self.max_field_size:
            self._refuse("a header field is too large")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _refuse(self, reason: str) -> None:
        if self._refused:
            return
        self._refused = True
        self._answer(
            b"431 Request Header Fields Too Large",
            RequestHeaderTooLarge.code,
            f"{reason} (see LIMIT_REQUEST_* in the API documentation)",
        )

    def send_400_response(self, msg: str) -> None:
        # Uvicorn's own answer to a request it cannot parse (both Content-Length
        # and Transfer-Encoding, a bad chunk, a malformed line) is plain text.
        self._answer(b"400 Bad Request", "bad_request", f"malformed HTTP request: {msg}")

    def _answer(self, status: bytes, code: str, message: str) -> None:
        """An error in the API's shape, then close (no route ran: no request id)."""
        error = {"code": code, "message": message, "request_id": None}
        body = json.dumps({"success": False, "error": error}).encode()
        self.transport.write(
            b"HTTP/1.1 " + status + b"\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


class BoundedUvicornWorker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "auto", "http": BoundedHttpToolsProtocol}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Gunicorn's limits (0 means its maximum, as Gunicorn reads them).
        BoundedHttpToolsProtocol.max_line = self.cfg.limit_request_line or 8190
        BoundedHttpToolsProtocol.max_fields = self.cfg.limit_request_fields or 32768
        BoundedHttpToolsProtocol.max_field_size = self.cfg.limit_request_field_size or 8190
