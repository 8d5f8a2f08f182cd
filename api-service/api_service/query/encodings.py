"""Response encodings for query results, built from Arrow without Python rows.

JSON text is assembled column by column with Arrow compute kernels (each
value becomes its JSON text, then rows are joined), which is several times
faster than building Python dicts; only small results (SMALL_JSON_CELLS),
where the kernels' fixed cost dominates, go through Python values and orjson,
with the same output. Precision rules (see docs/api-docs.md):

- DECIMAL, and integers outside +-(2**53 - 1) (BIGINT, UBIGINT, HUGEINT,
  UHUGEINT), are JSON *strings*: JavaScript numbers cannot hold them exactly.
  Arrow and Parquet keep them native (decimal128, int64, uint64).
- TIMESTAMP is ISO 8601 without offset; TIMESTAMPTZ is converted to UTC and
  carries `+00:00`; DATE and TIME are ISO strings; UUID is its text form.
- BLOB is base64; nested values (LIST, STRUCT, MAP) use JSON with the same
  decimal rule; NaN and infinities are `null`.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from api_service.errors import UnsupportedFormat
from api_service.http.negotiation import weighted_values

__all__ = [
    "FORMATS",
    "Column",
    "Encoding",
    "arrow_ipc_bytes",
    "csv_batch",
    "json_body",
    "ndjson_batch",
    "negotiate_format",
    "parquet_bytes",
]

JS_SAFE_INT = 2**53 - 1
_BIG_INT_TYPES = frozenset({"BIGINT", "UBIGINT", "HUGEINT", "UHUGEINT"})


@dataclass(frozen=True)
class Encoding:
    name: str
    media_type: str
    streamed: bool = False
    text: bool = True


FORMATS: dict[str, Encoding] = {
    "json": Encoding("json", "application/json"),
    "json_compact": Encoding("json_compact", "application/json"),
    "ndjson": Encoding("ndjson", "application/x-ndjson", streamed=True),
    "csv": Encoding("csv", "text/csv; charset=utf-8", streamed=True),
    "arrow": Encoding("arrow", "application/vnd.apache.arrow.stream", text=False),
    "parquet": Encoding("parquet", "application/vnd.apache.parquet", text=False),
}
_ACCEPT = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


def negotiate_format(requested: str | None, accept: str | None) -> Encoding:
    """`format=` wins; otherwise the Accept header (by q-value); JSON by default."""
    if requested:
        name = requested.strip().lower()
        if name not in FORMATS:
            raise UnsupportedFormat(
                f"format {requested!r} is not supported (use one of {', '.join(FORMATS)})"
            )
        return FORMATS[name]
    best: tuple[float, int, str] | None = None
    for position, (media, quality) in enumerate(weighted_values(accept)):
        match = _ACCEPT.get(media)
        if match and quality > 0 and (best is None or (quality, -position) > best[:2]):
            best = (quality, -position, match)
    return FORMATS[best[2] if best else "json"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB's type name, e.g. DECIMAL(12,2)

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}


# -- JSON value text per column -------------------------------------------------
def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, int):  # beyond 64 bits: orjson refuses, keep it exact
        return str(value)
    return str(value)


def _python_json(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The slow path (nested, binary, exotic types): orjson per value."""

    def one(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bytes | Decimal) or (
            isinstance(value, int) and abs(value) > JS_SAFE_INT
        ):
            return orjson.dumps(_default(value)).decode()
        return orjson.dumps(
            value,
            default=_default,
            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS,
        ).decode()

    return pa.array([one(v) for v in values.to_pylist()], pa.string())


def _quoted(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    return pc.binary_join_element_wise('"', text, '"', "")


def _string_bytes(text: pa.Array | pa.ChunkedArray) -> list[pa.Buffer]:
    """The UTF-8 data buffers of a string column (no copy)."""
    chunks = text.chunks if isinstance(text, pa.ChunkedArray) else [text]
    buffers = []
    for chunk in chunks:
        data = chunk.buffers()[2]
        if data is not None and data.size:
            buffers.append(data)
    return buffers


_CONTROL = re.compile(rb"[\x00-\x1f]")
_BACKSLASH = re.compile(rb"\\")
_QUOTE = re.compile(rb'"')
_SMALL_TEXT = 16_384  # bytes of string data below which the regex scan is cheaper


def _escaped(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray | None:
    """JSON string escaping; None when a value needs the slow path (control chars).

    Scanning the raw bytes (one C-level search of the buffer, no kernel call)
    is much cheaper than a regex per value; a byte of an unused region can
    only send a column down the slow path, never skip escaping.
    """
    buffers = _string_bytes(text)
    if sum(b.size for b in buffers) <= _SMALL_TEXT:
        # Small results: Python's regex search beats a kernel call's fixed cost.
        control = any(_CONTROL.search(b) for b in buffers)
        backslash = any(_BACKSLASH.search(b) for b in buffers)
        quote = any(_QUOTE.search(b) for b in buffers)
    else:
        views = [pa.Array.from_buffers(pa.uint8(), b.size, [None, b]) for b in buffers]
        control = any(pc.any(pc.less(v, 0x20)).as_py() for v in views)
        backslash = any(pc.any(pc.equal(v, 0x5C)).as_py() for v in views)
        quote = any(pc.any(pc.equal(v, 0x22)).as_py() for v in views)
    if control:
        return None
    if backslash:
        text = pc.replace_substring(text, "\\", "\\\\")
    if quote:
        text = pc.replace_substring(text, '"', '\\"')
    return text


def _iso(values: pa.ChunkedArray | pa.Array, pa_type: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """Python's isoformat(): 'T' separator, fraction only when non-zero, UTC as +00:00."""
    tz = "UTC" if pa_type.tz is not None else None
    # Milliseconds print as microseconds (".500000", as isoformat() does).
    unit = "us" if pa_type.unit == "ms" else pa_type.unit
    if tz or unit != pa_type.unit:
        values = pc.cast(values, pa.timestamp(unit, tz=tz))
    zeros = None
    if unit != "s":
        try:
            # Whole seconds throughout (the common case): a shorter text and no
            # fraction to strip. The safe cast refuses if any value has a fraction.
            values = pc.cast(values, pa.timestamp("s", tz=tz))
        except pa.ArrowInvalid:
            zeros = "." + "0" * {"us": 6, "ns": 9}[unit]
    text = pc.cast(values, pa.string())
    text = pc.replace_substring(text, " ", "T", max_replacements=1)
    if zeros:
        text = pc.replace_substring(text, zeros, "", max_replacements=1)
    if pa_type.tz is not None:
        text = pc.replace_substring(text, "Z", "+00:00", max_replacements=1)
    return text


RAW, QUOTE, DONE = "raw", "quote", "done"


def json_values(
    values: pa.ChunkedArray | pa.Array, duckdb_type: str
) -> tuple[pa.Array | pa.ChunkedArray, str]:
    """Each value as JSON text, and what is left to do: RAW (nulls still null),
    QUOTE (escaped string content: add quotes, then nulls) or DONE."""
    t = values.type
    if pa.types.is_dictionary(t):
        values = pc.cast(values, t.value_type)
        t = t.value_type
    if pa.types.is_null(t):
        return pa.array(["null"] * len(values), pa.string()), DONE
    if pa.types.is_boolean(t) or (pa.types.is_integer(t) and t.bit_width <= 32):
        return pc.cast(values, pa.string()), RAW
    if pa.types.is_integer(t) or (pa.types.is_decimal(t) and duckdb_type in _BIG_INT_TYPES):
        return _big_int(values), RAW
    if pa.types.is_floating(t):
        finite = pc.is_finite(values)
        text = pc.if_else(finite, pc.cast(values, pa.string()), pa.scalar(None, pa.string()))
        return pc.fill_null(text, "null"), DONE
    if pa.types.is_decimal(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return pc.cast(values, pa.string()), QUOTE
    if pa.types.is_timestamp(t):
        return _iso(values, t), QUOTE
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        escaped = _escaped(values)
        if escaped is not None:
            return escaped, QUOTE
    return _python_json(values), DONE


def _big_int(values: pa.ChunkedArray | pa.Array) -> pa.Array | pa.ChunkedArray:
    text = pc.cast(values, pa.string())
    if len(values) == 0 or values.null_count == len(values):
        return text
    low, high = pc.min_max(values).values()
    if int(low.as_py()) >= -JS_SAFE_INT and int(high.as_py()) <= JS_SAFE_INT:
        return text
    if pa.types.is_decimal(values.type):
        safe = pc.and_(
            pc.greater_equal(values, pa.scalar(Decimal(-JS_SAFE_INT), values.type)),
            pc.less_equal(values, pa.scalar(Decimal(JS_SAFE_INT), values.type)),
        )
    else:
        bound = pa.scalar(JS_SAFE_INT, values.type)
        in_range = pc.less_equal(values, bound)
        if pa.types.is_signed_integer(values.type):
            in_range = pc.and_(in_range, pc.greater_equal(values, pa.scalar(-JS_SAFE_INT)))
        safe = in_range
    return pc.if_else(safe, text, _quoted(text))


# Rows are written this many at a time: each column's text and their joins are
# copies of the body, so a whole large result at once held several bodies
# (a 10 MiB Arrow result peaked at 18x its size; benchmarks/encode_memory.py).
ROWS_PER_CHUNK = 8192


def _rows(
    table: pa.Table, columns: list[Column], *, shape: str, row_sep: str
) -> list[pa.Buffer | bytes]:
    """Rows as JSON objects (or arrays), joined by `row_sep`: the body's pieces."""
    pieces: list[pa.Buffer | bytes] = []
    for start in range(0, table.num_rows, ROWS_PER_CHUNK):
        if start:
            pieces.append(row_sep.encode())
        chunk = table.slice(start, ROWS_PER_CHUNK)
        pieces.append(_row_chunk(chunk, columns, shape=shape, row_sep=row_sep))
    return pieces


def _row_chunk(
    table: pa.Table, columns: list[Column], *, shape: str, row_sep: str
) -> pa.Buffer | bytes:
    if not table.columns:
        return row_sep.join(["{}" if shape == "objects" else "[]"] * table.num_rows).encode()
    # Literal text and value arrays alternate; quotes of columns without NULLs
    # go into the literals, which saves a pass over the data.
    parts: list[Any] = []
    literal = ""
    for i, (col, values) in enumerate(zip(columns, table.columns, strict=True)):
        text, todo = json_values(values, col.type)
        if shape == "objects":
            literal += ("{" if i == 0 else ",") + orjson.dumps(col.name).decode() + ":"
        else:
            literal += "[" if i == 0 else ","
        if todo == QUOTE and not values.null_count:
            parts += [literal + '"', text]
            literal = '"'
            continue
        if todo == QUOTE:
            text = _quoted(text)
        if todo != DONE and values.null_count:
            text = pc.fill_null(text, "null")
        parts += [literal, text]
        literal = ""
    parts.append(literal + ("}" if shape == "objects" else "]"))
    rows = pc.binary_join_element_wise(*parts, "")
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    as_list = pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows)
    joined: pa.Buffer = pc.binary_join(as_list, row_sep)[0].as_buffer()
    return joined


# -- small results: Python values + orjson ----------------------------------------
# Up to this many cells (rows x columns) the fixed cost of several Arrow kernel calls
# per column outweighs converting the values to Python and letting orjson write
# them: 100 rows x 4 columns 0.06 ms instead of 0.12 ms, 4 rows of 16 awkward
# columns 0.18 ms instead of 0.85 ms; past ~2,000 cells the kernels win.
SMALL_JSON_CELLS = 2_048


def _py_values(values: pa.ChunkedArray | pa.Array, duckdb_type: str) -> list[Any] | None:
    """One column as Python values that orjson writes exactly as json_values()
    would (texts of decimals, dates, times and timestamps come from the same
    kernels), or None when the column needs the Arrow path."""
    t = values.type
    if pa.types.is_dictionary(t):
        values = pc.cast(values, t.value_type)
        t = t.value_type
    if pa.types.is_null(t) or pa.types.is_boolean(t):
        return values.to_pylist()
    if pa.types.is_integer(t) and t.bit_width <= 32:
        return values.to_pylist()
    if pa.types.is_integer(t) or (pa.types.is_decimal(t) and duckdb_type in _BIG_INT_TYPES):
        return [
            None if v is None else (int(v) if -JS_SAFE_INT <= v <= JS_SAFE_INT else str(int(v)))
            for v in values.to_pylist()
        ]
    if pa.types.is_float64(t):
        # orjson writes NaN and infinities as null, like the Arrow path.
        return values.to_pylist()
    if pa.types.is_decimal(t) or pa.types.is_date(t) or pa.types.is_time(t):
        return pc.cast(values, pa.string()).to_pylist()
    if pa.types.is_timestamp(t):
        return _iso(values, t).to_pylist()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values.to_pylist()
    if (
        pa.types.is_nested(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        # The Arrow path's own per-value text, embedded as is.
        return [orjson.Fragment(text) for text in _python_json(values).to_pylist()]
    return None  # float16/32 and anything unusual: the Arrow path decides


def _small_json_body(
    table: pa.Table, columns: list[Column], *, compact: bool, tail: dict[str, Any]
) -> bytes | None:
    names = [c.name for c in columns]
    if not compact and len(set(names)) != len(names):
        return None  # duplicate names: a dict would drop one; the Arrow path keeps both
    values = []
    for col, column in zip(columns, table.columns, strict=True):
        converted = _py_values(column, col.type)
        if converted is None:
            return None
        values.append(converted)
    # Every column has num_rows values, so plain zip() is exact here.
    if not columns:
        data: list[Any] = [[] if compact else {} for _ in range(table.num_rows)]
    elif compact:
        data = list(zip(*values))  # noqa: B905  (orjson writes tuples as arrays)
    else:
        data = [dict(zip(names, row)) for row in zip(*values)]  # noqa: B905
    return orjson.dumps({"success": True, "data": data, **tail})


def json_body(
    table: pa.Table,
    columns: list[Column],
    *,
    compact: bool,
    truncated: bool,
    data_version: str,
    execution_time_ms: float,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The whole JSON document. Objects shape = the seed's response; `extra`
    adds fields at the end (`next`, `total`: query/pagination.py).

    Small results go through Python values and orjson, larger ones through
    Arrow kernels; both give the same document (tests/test_encodings.py)."""
    tail = {
        "columns": [c.as_dict() for c in columns],
        "row_count": table.num_rows,
        "truncated": truncated,
        "data_version": data_version,
        "execution_time_ms": execution_time_ms,
        **(extra or {}),
    }
    if table.num_rows * max(1, table.num_columns) <= SMALL_JSON_CELLS:
        body = _small_json_body(table, columns, compact=compact, tail=tail)
        if body is not None:
            return body
    return _arrow_json_body(table, columns, compact=compact, tail=tail)


def _arrow_json_body(
    table: pa.Table, columns: list[Column], *, compact: bool, tail: dict[str, Any]
) -> bytes:
    rows = _rows(table, columns, shape="arrays" if compact else "objects", row_sep=",")
    end = orjson.dumps(tail)
    # One copy of the rows into the body (bytes.join takes Arrow buffers as they are).
    return b"".join((b'{"success":true,"data":[', *rows, b"],", memoryview(end)[1:]))


def ndjson_batch(batch: pa.Table, columns: list[Column]) -> bytes:
    rows = _rows(batch, columns, shape="objects", row_sep="\n")
    return b"".join((*rows, b"\n")) if rows else b""


def _csv_column(values: pa.ChunkedArray, duckdb_type: str) -> pa.ChunkedArray | pa.Array:
    t = values.type
    if pa.types.is_dictionary(t):
        return pc.cast(values, t.value_type)
    if pa.types.is_timestamp(t):
        return _iso(values, t)
    if (
        pa.types.is_decimal(t)
        or pa.types.is_time(t)
        or pa.types.is_date(t)
        or (pa.types.is_integer(t) and t.bit_width == 64)
    ):
        return pc.cast(values, pa.string())
    if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        text = _python_json(values)
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            # base64 text, without the JSON quotes
            text = pc.utf8_slice_codeunits(text, 1, -1)
        return pc.if_else(pc.is_null(values), pa.scalar(None, pa.string()), text)
    return values


def csv_batch(batch: pa.Table, columns: list[Column], *, header: bool) -> bytes:
    """RFC 4180 CSV; NULL is an empty field, same text rules as JSON (unquoted)."""
    prepared = pa.table(
        [_csv_column(v, c.type) for v, c in zip(batch.columns, columns, strict=True)],
        names=[f"c{i}" for i in range(len(columns))],
    )
    sink = io.BytesIO()
    if header:
        sink.write(_csv_header([c.name for c in columns]))
    if prepared.num_rows:
        pacsv.write_csv(
            prepared,
            sink,
            pacsv.WriteOptions(include_header=False, quoting_style="needed"),
        )
    return sink.getvalue()


def _csv_header(names: list[str]) -> bytes:
    def field(name: str) -> str:
        if any(ch in name for ch in ',"\r\n'):
            return '"' + name.replace('"', '""') + '"'
        return name

    return (",".join(field(n) for n in names) + "\n").encode()


def _with_metadata(
    table: pa.Table, columns: list[Column], data_version: str, truncated: bool
) -> pa.Table:
    # Names and DuckDB types travel inside the file; the Arrow schema has the rest.
    meta = {
        b"duckdb_types": orjson.dumps([c.as_dict() for c in columns]),
        b"data_version": data_version.encode(),
        b"truncated": b"true" if truncated else b"false",
    }
    return table.replace_schema_metadata(meta)


def arrow_ipc_bytes(
    table: pa.Table, columns: list[Column], *, data_version: str, truncated: bool
) -> bytes:
    table = _with_metadata(table, columns, data_version, truncated)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def parquet_bytes(
    table: pa.Table, columns: list[Column], *, data_version: str, truncated: bool
) -> bytes:
    table = _with_metadata(table, columns, data_version, truncated)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()
