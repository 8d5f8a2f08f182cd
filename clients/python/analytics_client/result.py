"""`QueryResult`: one answer, as rows or as Arrow, pandas and polars frames.

`to_arrow()` needs the `arrow` extra (pyarrow), `to_pandas()` the `pandas`
extra, `to_polars()` the `polars` extra. Ask for `format="arrow"` to get
native column types (int64, decimal128, timestamps) from the API itself;
a JSON answer is converted from its rows.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any

from analytics_client.errors import AnalyticsError

__all__ = ["QueryResult"]

_EXTRA = {"pyarrow": "arrow", "pandas": "pandas", "polars": "polars"}


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AnalyticsError(
            0,
            "missing_dependency",
            f"{module} is not installed: pip install 'analytics-client[{_EXTRA[module]}]'",
        ) from exc


@dataclass
class QueryResult:
    columns: list[dict[str, str]]
    row_count: int
    truncated: bool
    data_version: str
    execution_time_ms: float = 0.0
    query: str | None = None
    next: str | None = None
    """Opaque cursor for the next page when the API gives one (see `AnalyticsClient.pages`)."""
    total: int | None = None
    """Rows of the whole result, when asked for with `count="exact"`."""
    etag: str | None = None
    from_cache: bool = False
    request_id: str | None = None
    _rows: list[dict[str, Any]] | None = field(default=None, repr=False)
    _arrow: Any = field(default=None, repr=False)

    @property
    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = self._arrow.to_pylist() if self._arrow is not None else []
        return self._rows

    def to_arrow(self) -> Any:
        """A `pyarrow.Table` (native types when the answer was `format="arrow"`)."""
        pa = _require("pyarrow")
        if self._arrow is None:
            names = [c["name"] for c in self.columns]
            self._arrow = pa.Table.from_pylist(self.rows).select(names) if self.rows else None
            if self._arrow is None:
                self._arrow = pa.table({name: pa.array([], pa.null()) for name in names})
        return self._arrow

    def to_pandas(self) -> Any:
        _require("pandas")
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        pl = _require("polars")
        return pl.from_arrow(self.to_arrow())

    @classmethod
    def from_arrow_bytes(cls, data: bytes, headers: Any) -> QueryResult:
        pa = _require("pyarrow")
        table = pa.ipc.open_stream(data).read_all()
        meta = table.schema.metadata or {}
        types = meta.get(b"duckdb_types") or headers.get("x-columns", "").encode()
        columns = (
            json.loads(types) if types else [{"name": n, "type": ""} for n in table.column_names]
        )
        return cls(
            columns=columns,
            row_count=table.num_rows,
            truncated=(meta.get(b"truncated") or b"").decode() == "true",
            data_version=(meta.get(b"data_version") or b"").decode()
            or headers.get("x-data-version", ""),
            request_id=headers.get("x-request-id"),
            _arrow=table,
        )
