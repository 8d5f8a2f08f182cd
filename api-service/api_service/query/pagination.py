"""Pages of a JSON (or Arrow/Parquet) result: opaque, signed `next` cursors.

An answer that stops before the end of its result carries `next`, a cursor
the caller sends back unchanged (`cursor` in the POST body, `cursor=` on GET)
with the same request to get the following rows; `count=exact` adds `total`.

A cursor is signed (auth/signing.py) and holds the data version, the row
offset, and a digest of the query it belongs to (guarded SQL, bound
parameters, format). It carries no SQL: the caller resends the query, which
passes authentication, the policy and the SQL guard as any other, so a
cursor can neither change the query nor reach rows the guard would refuse.

Pages are offsets into one snapshot version, so they are exact when the
query's ORDER BY is a total order (ends with a unique key); without ORDER BY
DuckDB keeps the table's order. A cursor from an older version is refused
with 409 `stale_cursor` (start again from the first page); one from a newer
version than this worker serves yet is 503 with `Retry-After: 1` while the
worker has not loaded the manifest's version (a sibling swapped first); after
a rollback it is stale too.

What must always hold: a cursor is used only with the query, format and data
version it was made for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from api_service.auth.signing import BadSignature, Signer
from api_service.errors import DataUnavailable, InvalidCursor, StaleCursor
from api_service.query.result_cache import query_key

__all__ = ["CURSOR_KIND", "FIRST_PAGE", "Cursor", "PageFields", "Paginator", "Paging"]

CURSOR_KIND = "cursor"


class PageFields(BaseModel):
    """The paging fields of a request (POST body fields, or GET query parameters)."""

    cursor: str | None = Field(
        None, max_length=2048, description="`next` of the previous page, sent back unchanged"
    )
    page_size: int | None = Field(
        None, ge=1, description="Rows per page (at most MAX_RESULT_ROWS, the default)"
    )
    count: Literal["exact"] | None = Field(
        None, description="`exact` adds `total`, the number of rows of the whole result"
    )


@dataclass(frozen=True)
class Cursor:
    version: str
    offset: int
    binding: str  # digest of (guarded SQL, params, format)


@dataclass(frozen=True)
class Paging:
    """What the caller asked for: a page size, a total count, where to start."""

    page_size: int | None = None
    count: bool = False
    cursor: Cursor | None = None

    @property
    def offset(self) -> int:
        return self.cursor.offset if self.cursor else 0

    def variant(self) -> str:
        """What the paging adds to the answer's identity (cache key, ETag)."""
        if self.page_size is None and not self.count and self.cursor is None:
            return ""
        return f":p{self.page_size}:o{self.offset}:c{int(self.count)}"


FIRST_PAGE = Paging()


class Paginator:
    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def paging(
        self, cursor: str | None, count: str | None = None, page_size: int | None = None
    ) -> Paging:
        """The caller's paging fields, the cursor's signature checked."""
        if count not in (None, "exact", "none"):
            raise InvalidCursor("count must be 'exact' (or absent)")
        if cursor is None and page_size is None and count in (None, "none"):
            return FIRST_PAGE
        return Paging(page_size, count == "exact", self._decode(cursor) if cursor else None)

    def _decode(self, token: str) -> Cursor:
        try:
            payload = self.signer.verify(CURSOR_KIND, token)
            version, offset, binding = payload["v"], payload["o"], payload["b"]
        except (BadSignature, KeyError, TypeError, ValueError):
            raise InvalidCursor(
                "the cursor is not one this API issued (send `next` back unchanged)"
            ) from None
        if not (isinstance(version, str) and isinstance(offset, int) and isinstance(binding, str)):
            raise InvalidCursor("the cursor is not one this API issued")
        return Cursor(version, offset, binding)

    @staticmethod
    def binding(sql: str, params: Any, encoding: str) -> str:
        return query_key("", sql, params, encoding)

    def check(self, paging: Paging, version: str, binding: str, latest_seen: str | None) -> None:
        """Refuse a cursor made for another query or another data version.

        `latest_seen` is the version the manifest named at this worker's last
        poll: a newer cursor is only worth a retry while this worker lags."""
        cursor = paging.cursor
        if cursor is None:
            return
        if cursor.binding != binding:
            raise InvalidCursor(
                "this cursor belongs to another query, parameters or format;"
                " resend the request it came with"
            )
        if cursor.version == version:
            return
        lagging = latest_seen is None or latest_seen != version
        if cursor.version > version and lagging:  # versions are UTC timestamps: sortable
            raise DataUnavailable(
                f"this server does not serve data version {cursor.version} yet; retry shortly",
                headers={"Retry-After": "1"},
            )
        raise StaleCursor(
            f"the data changed (version {cursor.version} -> {version}) since this cursor was"
            " made; start again from the first page"
        )

    def next_cursor(self, paging: Paging, version: str, binding: str, rows: int) -> str:
        payload = {"v": version, "o": paging.offset + rows, "b": binding}
        return self.signer.sign(CURSOR_KIND, payload)
