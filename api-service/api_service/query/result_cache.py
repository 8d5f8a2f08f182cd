"""An in-memory LRU cache of encoded query responses, bounded by bytes.

Keys include the data version, so a response computed on one snapshot can
never answer for another; entries of older versions are dropped as soon as a
newer version is seen. The cache sits after authentication, the app policy,
the rate limit and the SQL guard: a hit skips only the execution.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

__all__ = ["CachedResponse", "ResultCache", "normalise_sql", "query_key"]

_ENTRY_OVERHEAD = 256  # key, headers and bookkeeping, roughly


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    media_type: str
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return (
            len(self.body) + _ENTRY_OVERHEAD + sum(len(k) + len(v) for k, v in self.headers.items())
        )


def normalise_sql(sql: str) -> str:
    """The statement with insignificant whitespace removed (tokens kept verbatim).

    Only whitespace between tokens goes; literals, identifiers and their case
    stay as written (they can change results or column names).
    """
    try:
        tokens = duckdb.tokenize(sql)
    except Exception:  # an untokenisable statement never reaches here (guard)
        return sql.strip()
    starts = [pos for pos, _ in tokens] + [len(sql)]
    kinds = [kind for _, kind in tokens]
    out: list[str] = []
    for (a, b), kind in zip(itertools.pairwise(starts), kinds, strict=True):
        piece = sql[a:b]
        token = piece.rstrip()
        # Whitespace between tokens becomes one space (none stays none); after a
        # -- comment it is a newline, which is what ends the comment.
        gap = (
            ("\n" if kind == duckdb.token_type.comment else " ") if len(token) < len(piece) else ""
        )
        out.append(token + gap)
    return "".join(out).rstrip()


def query_key(
    data_version: str,
    sql: str,
    params: dict[str, Any] | list[Any] | None,
    variant: str,
) -> str:
    """A stable digest of everything that determines the response body."""
    parts = [data_version, normalise_sql(sql), params, variant]
    try:
        canonical = orjson.dumps(
            parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str
        )
    except TypeError:  # an integer past 64 bits, which orjson refuses
        canonical = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(canonical, digest_size=20).hexdigest()


class ResultCache:
    """Thread-safe; `max_bytes=0` disables it. Entries over max_bytes/4 are not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // 4
        self._entries: OrderedDict[tuple[str, str], CachedResponse] = OrderedDict()
        self._lock = threading.Lock()
        self._version: str | None = None
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, version: str, key: str) -> CachedResponse | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get((version, key))
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end((version, key))
            self.hits += 1
            return entry

    def put(self, version: str, key: str, entry: CachedResponse) -> bool:
        size = entry.size
        if not self.enabled or size > self.max_entry_bytes:
            return False
        with self._lock:
            if self._version != version:
                # A new version (or a rollback) makes every other entry unreachable.
                self._drop_all_but(version)
                self._version = version
            old = self._entries.pop((version, key), None)
            if old is not None:
                self.bytes -= old.size
            self._entries[(version, key)] = entry
            self.bytes += size
            while self.bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.size
        return True

    def _drop_all_but(self, version: str) -> None:
        for cache_key in [k for k in self._entries if k[0] != version]:
            self.bytes -= self._entries.pop(cache_key).size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
