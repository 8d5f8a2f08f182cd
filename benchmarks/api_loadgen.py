"""A small closed-loop HTTP/1.1 load generator (asyncio, keep-alive, loopback).

`concurrency` connections each send one request, read the whole response,
and send the next, until `duration` seconds pass or `max_requests` were
sent. Latency is measured per request on the client. Raw sockets instead of
httpx keep the client's own CPU cost small: on a 2-core machine the load
generator shares the cores with the servers it measures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

__all__ = ["LoadResult", "get_request", "run_load"]


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    bytes: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def get_request(base_url: str, path: str, params: dict[str, str], headers: dict[str, str]) -> bytes:
    host = urlsplit(base_url).netloc
    lines = [f"GET {path}?{urlencode(params)} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    size = 0
    if chunked:
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(n + 2)
            size += n
            if n == 0:
                break
    elif length:
        await reader.readexactly(length)
        size = length
    return status, size, close


async def _load(
    url: str,
    make_request: Callable[[int], bytes],
    concurrency: int,
    duration: float,
    max_requests: int,
) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    errors = total_bytes = 0
    budget = itertools.count()
    deadline = time.perf_counter() + duration

    async def client(number: int) -> None:
        nonlocal errors, total_bytes
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline and next(budget) < max_requests:
                request = make_request(number)
                started = time.perf_counter()
                try:
                    writer.write(request)
                    status, size, close = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server dropped the connection (e.g. a keep-alive timer
                    # fired while its event loop was blocked): an error, reconnect.
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                total_bytes += size
                if status != 200:
                    errors += 1
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    seconds = time.perf_counter() - started
    return LoadResult(len(latencies), errors, seconds, latencies, total_bytes)


def run_load(
    url: str,
    make_request: Callable[[int], bytes],
    *,
    concurrency: int,
    duration: float,
    max_requests: int,
) -> LoadResult:
    """`make_request(n)` builds client n's next request (each client may be its own user)."""
    return asyncio.run(_load(url, make_request, concurrency, duration, max_requests))
