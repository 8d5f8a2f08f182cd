"""A request head past the LIMIT_REQUEST_* limits is answered 431 in the API's
error shape (issue 12, review 3), by real Gunicorn with the bounded worker:
JSON with code `request_header_too_large`, and `Connection: close`."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator

import pytest

from testsupport.api_server import ApiServer


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, issuer) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("head-limits")
    (root / "store").mkdir()
    env = {
        **issuer.settings_env(),
        "STORAGE_URL": (root / "store").as_uri(),
        "DATA_DIR": str(root / "var"),
        "LIMIT_REQUEST_LINE": "1024",
        "LIMIT_REQUEST_FIELDS": "20",
        "LIMIT_REQUEST_FIELD_SIZE": "2048",
    }
    server = ApiServer(env, workers=1, log_path=root / "api.log").start(require_data=False)
    try:
        yield server
    finally:
        server.stop()


def _exchange(api: ApiServer, head: bytes) -> bytes:
    answer = b""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may close before reading it all
            sock.sendall(head)
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                answer += data
    return answer


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health?x=" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(40))
        + b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000,  # never ends
    ],
    ids=["request_line", "header_field", "too_many_fields", "unfinished_head"],
)
def test_an_oversized_head_is_a_431_in_the_error_shape(api, head):
    error = _error_answer(_exchange(api, head), b"HTTP/1.1 431 Request Header Fields Too Large")
    assert error["error"]["code"] == "request_header_too_large"


SMUGGLED = b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % len(SMUGGLED) + SMUGGLED,
        b"POST /query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /health HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    ],
    ids=["content_length_and_chunked", "bad_chunk_size", "malformed_request_line"],
)
def test_a_request_the_parser_cannot_read_is_a_400_in_the_error_shape(api, head):
    answer = _exchange(api, head)
    error = _error_answer(answer, b"HTTP/1.1 400 Bad Request")
    assert error["error"]["code"] == "bad_request"
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing smuggled in behind it was answered


def _error_answer(answer: bytes, status_line: bytes) -> dict:
    status, _, rest = answer.partition(b"\r\n")
    assert status == status_line, answer[:200]
    headers_text, _, body = rest.partition(b"\r\n\r\n")
    headers = dict(
        line.decode().lower().split(": ", 1) for line in headers_text.split(b"\r\n") if line
    )
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert error["success"] is False
    assert error["error"]["message"]
    return error
