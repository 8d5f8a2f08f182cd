"""`AnalyticsClient`: the API's read endpoints as typed calls (httpx, sync).

Every call goes through `_send()`: it asks the token provider for a token on
each attempt, retries 429/503 as `RetryPolicy` decides (honouring
`Retry-After`), sends `If-None-Match` when the ETag cache knows the request
(a 304 reuses the remembered body), and raises one `AnalyticsError` for every
failure.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Literal
from urllib.parse import quote

import httpx

from analytics_client.auth import StaticToken, TokenProvider
from analytics_client.errors import AnalyticsError
from analytics_client.result import QueryResult
from analytics_client.retry import RetryPolicy, parse_retry_after
from analytics_client.values import DecimalMode, normalize_rows

__all__ = ["AnalyticsClient"]

Params = dict[str, Any] | list[Any]
_MAX_GET_URL = 2000


class _EtagCache:
    """Last answer per request with its ETag; least recently used go first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, Any]] = OrderedDict()

    def get(self, key: str) -> tuple[str, Any] | None:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def put(self, key: str, etag: str, body: Any) -> None:
        self._entries[key] = (etag, body)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _extra(
    format: str, cursor: str | None, page_size: int | None, count: str | None
) -> dict[str, Any]:
    """The optional request fields, left out when not set."""
    fields: dict[str, Any] = {"format": None if format == "json" else format, "cursor": cursor}
    fields.update(page_size=page_size, count=count)
    return {k: v for k, v in fields.items() if v}


class AnalyticsClient:
    def __init__(
        self,
        base_url: str,
        token: TokenProvider | str | None = None,
        *,
        retry: RetryPolicy | None = None,
        etag_cache: int = 200,
        decimals: DecimalMode = "decimal",
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`token`: a string, or a callable returning one (e.g. `ClientCredentials`).
        `etag_cache`: how many answers to remember (0 turns the cache off)."""
        self.base_url = base_url.rstrip("/")
        self._token = StaticToken(token) if isinstance(token, str) else token
        self.retry = retry or RetryPolicy()
        self._cache = _EtagCache(etag_cache) if etag_cache > 0 else None
        self.decimals = decimals
        self._http = http or httpx.Client(timeout=timeout)
        self._owns_http = http is None
        self._sleep = sleep

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> AnalyticsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- endpoints --------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Readiness and data version (no token; answers while starting, ready=False)."""
        return dict(self._send("GET", "/health", auth=False, ok=(503,), cache=False).json())

    def schema(self) -> dict[str, Any]:
        return dict(self._send("GET", "/schema").json())

    def list_named_queries(self) -> list[dict[str, Any]]:
        return list(self._send("GET", "/queries").json()["queries"])

    def query(
        self,
        sql: str,
        params: Params | None = None,
        *,
        format: Literal["json", "arrow"] = "json",
        method: Literal["GET", "POST"] | None = None,
        cursor: str | None = None,
        page_size: int | None = None,
        count: Literal["exact"] | None = None,
        data_version: str | None = None,
        data_version_wait: float = 10.0,
    ) -> QueryResult:
        """One read-only SELECT. Without params it goes over GET (revalidated with 304).
        `page_size` rows per page (`next` continues), `count="exact"` adds `total`.
        `data_version`: the version the answer should come from (one
        `data_versions()` announced): see `_at_version`."""
        return self._at_version(
            data_version,
            data_version_wait,
            lambda: self._query(sql, params, format, method, cursor, page_size, count),
        )

    def _query(
        self,
        sql: str,
        params: Params | None,
        format: Literal["json", "arrow"],
        method: Literal["GET", "POST"] | None,
        cursor: str | None,
        page_size: int | None,
        count: Literal["exact"] | None,
    ) -> QueryResult:
        extra = _extra(format, cursor, page_size, count)
        query = {"q": sql, **{k: str(v) for k, v in extra.items()}}
        url_length = len(self.base_url) + len(str(httpx.QueryParams(query))) + 7
        chosen = method or ("GET" if params is None and url_length <= _MAX_GET_URL else "POST")
        if chosen == "GET":
            if params is not None:
                raise ValueError("GET /query takes no params: use method='POST' (the default)")
            answer = self._send("GET", "/query", query=query, cache=format == "json")
        else:
            body: dict[str, Any] = {"sql": sql, **extra}
            if params is not None:
                body["params"] = params
            answer = self._send("POST", "/query", body=body, cache=format == "json")
        return self._result(answer, format)

    def named_query(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        *,
        format: Literal["json", "arrow"] = "json",
        cursor: str | None = None,
        page_size: int | None = None,
        count: Literal["exact"] | None = None,
        data_version: str | None = None,
        data_version_wait: float = 10.0,
    ) -> QueryResult:
        """A named query from the whitelist (what applications should call); POST,
        revalidated with If-None-Match like GETs. `data_version`: as in `query()`."""
        body: dict[str, Any] = {"params": params or {}, **_extra(format, cursor, page_size, count)}
        path = "/queries/" + quote(name, safe="")

        def run() -> QueryResult:
            answer = self._send("POST", path, body=body, cache=format == "json")
            result = self._result(answer, format)
            # The API's answer does not name the query; the client does.
            result.query = result.query or name
            return result

        return self._at_version(data_version, data_version_wait, run)

    def pages(
        self, sql: str, params: Params | None = None, *, page_size: int | None = None
    ) -> Iterator[QueryResult]:
        """Every page of a query: the first answer, then the API's `next` cursor
        followed (the same request with `cursor` added) until there is none.
        A page after a new data version raises `stale_cursor`: start again."""
        return self._follow(
            lambda cursor: self.query(sql, params, cursor=cursor, page_size=page_size)
        )

    def named_query_pages(
        self, name: str, params: dict[str, Any] | None = None, *, page_size: int | None = None
    ) -> Iterator[QueryResult]:
        return self._follow(
            lambda cursor: self.named_query(name, params, cursor=cursor, page_size=page_size)
        )

    def data_versions(self, interval: float = 3.0, timeout: float | None = None) -> Iterator[str]:
        """Yields the current data version, then each new one, from `GET /events`
        (Server-Sent Events). A dropped stream is reopened after `interval`
        seconds with `Last-Event-ID`, so the API does not repeat the last
        version; the iteration ends after `timeout` seconds when given."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: str | None = None
        while deadline is None or time.monotonic() < deadline:
            try:
                for version in self._event_stream(last, deadline):
                    if version != last:
                        last = version
                        yield version
            except (httpx.HTTPError, AnalyticsError):
                pass  # reopened below
            if deadline is not None and time.monotonic() >= deadline:
                return
            self._sleep(interval)

    def _event_stream(self, last: str | None, deadline: float | None) -> Iterator[str]:
        headers = {"Accept": "text/event-stream"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._bearer(1)}"
        if last is not None:
            headers["Last-Event-ID"] = last
        # Heartbeats arrive every EVENTS_HEARTBEAT_SECONDS (15 s by default).
        read = 60.0 if deadline is None else max(0.1, min(60.0, deadline - time.monotonic()))
        timeout = httpx.Timeout(10.0, read=read)
        with self._http.stream(
            "GET", self.base_url + "/events", headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                response.read()
                raise AnalyticsError(response.status_code, "events_refused", response.text[:200])
            event, data = "", ""
            for line in response.iter_lines():
                if line == "":
                    if event == "data_version":
                        version = json.loads(data).get("data_version")
                        if isinstance(version, str):
                            yield version
                    event, data = "", ""
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def clear_cache(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    # -- plumbing ---------------------------------------------------------

    def _at_version(
        self, wanted: str | None, wait: float, run: Callable[[], QueryResult]
    ) -> QueryResult:
        """`run()`, repeated while its answer is from another data version than
        `wanted`: Gunicorn workers and replicas swap to a new version one by
        one, so the next request can reach one still on the old version. Waits
        0.25 s, doubling to 2 s (each a request against the rate limit), for
        up to `wait` seconds; then the last answer is returned as it is."""
        deadline = time.monotonic() + wait
        delay = 0.25
        while True:
            result = run()
            left = deadline - time.monotonic()
            if wanted is None or result.data_version == wanted or left <= 0:
                return result
            self._sleep(min(delay, left))
            delay = min(2 * delay, 2.0)

    def _follow(self, fetch: Callable[[str | None], QueryResult]) -> Iterator[QueryResult]:
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = fetch(cursor)
            yield page
            if not page.next:
                return
            if page.next in seen:
                raise AnalyticsError(0, "invalid_response", "the API returned a cursor twice")
            seen.add(page.next)
            cursor = page.next

    def _result(self, answer: _Answer, format: str) -> QueryResult:
        if format == "arrow":
            return QueryResult.from_arrow_bytes(answer.content, answer.headers)
        body = answer.json()
        if not isinstance(body, dict) or "data" not in body or "columns" not in body:
            raise AnalyticsError(answer.status, "invalid_response", "no data/columns in the answer")
        rows = normalize_rows(
            [dict(r) for r in body["data"]] if answer.from_cache else body["data"],
            body["columns"],
            self.decimals,
        )
        nxt = body.get("next")
        return QueryResult(
            columns=body["columns"],
            row_count=int(body.get("row_count", len(rows))),
            truncated=bool(body.get("truncated", False)),
            data_version=str(body.get("data_version") or answer.headers.get("x-data-version", "")),
            execution_time_ms=float(body.get("execution_time_ms", 0.0)),
            query=body.get("query"),
            next=nxt if isinstance(nxt, str) and nxt else None,
            total=body.get("total") if isinstance(body.get("total"), int) else None,
            etag=answer.headers.get("etag"),
            from_cache=answer.from_cache,
            request_id=answer.headers.get("x-request-id"),
            _rows=rows,
        )

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        auth: bool = True,
        ok: tuple[int, ...] = (),
        cache: bool = True,
    ) -> _Answer:
        url = self.base_url + path
        content = None if body is None else json.dumps(body, separators=(",", ":"))
        cache_key = f"{method} {httpx.URL(url, params=query)} {content or ''}"
        use_cache = cache and self._cache is not None
        attempt = 0
        while True:
            attempt += 1
            headers: dict[str, str] = {}
            if auth and self._token is not None:
                headers["Authorization"] = f"Bearer {self._bearer(attempt)}"
            if content is not None:
                headers["Content-Type"] = "application/json"
            cached = self._cache.get(cache_key) if use_cache and self._cache else None
            if cached:
                headers["If-None-Match"] = cached[0]
            try:
                response = self._http.request(
                    method, url, params=query, content=content, headers=headers
                )
            except httpx.TimeoutException as exc:
                raise AnalyticsError(0, "timeout", f"no answer from {url}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise AnalyticsError(0, "network_error", f"could not reach {url}: {exc}") from exc
            if response.status_code == 304 and cached:
                return _Answer(304, response.headers, b"", cached[1], from_cache=True)
            if response.is_success or response.status_code in ok:
                answer = _Answer(response.status_code, response.headers, response.content)
                etag = response.headers.get("etag")
                if use_cache and self._cache and etag and response.is_success:
                    self._cache.put(cache_key, etag, answer.json())
                return answer
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            delay = self.retry.delay(attempt, response.status_code, retry_after)
            if delay is None:
                raise AnalyticsError.from_response(response, attempt, retry_after)
            self._sleep(delay)

    def _bearer(self, attempt: int) -> str:
        assert self._token is not None
        try:
            token = self._token()
        except AnalyticsError:
            raise
        except Exception as exc:
            raise AnalyticsError(
                0, "token_error", f"could not get an access token: {exc}", attempts=attempt
            ) from exc
        if not token:
            raise AnalyticsError(0, "token_error", "the token provider returned no token")
        return token


class _Answer:
    def __init__(
        self,
        status: int,
        headers: httpx.Headers,
        content: bytes,
        body: Any = None,
        from_cache: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = content
        self._body = body
        self.from_cache = from_cache

    def json(self) -> Any:
        if self._body is None:
            try:
                self._body = json.loads(self.content)
            except ValueError as exc:
                raise AnalyticsError(
                    self.status, "invalid_response", "expected a JSON answer"
                ) from exc
        return self._body
