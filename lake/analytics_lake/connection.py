"""One DuckDB 1.5.5 connection with the DuckLake extensions, attached to the lake.

The extensions come from their PyPI wheels and are loaded from the wheel's
file (`LOAD '<path>'`) with automatic install and load switched off: a lake
process never downloads anything at run time. They are loaded once per
process (about 0.6 s) into one in-memory DuckDB; each request gets its own
connection (cursor) to it, with the lake attached, and `reset()` detaches
everything once the request is answered (attachments belong to the database,
not to the connection).

A request names the lake as a plain dict (built by analytics_shared.lake):
    catalog          libpq connection string of the PostgreSQL catalog
    metadata_schema  the catalog's schema
    data_path        where data files live: "s3://bucket/prefix/lake/" or "/abs/lake/"
    s3               optional: key_id, secret, session_token, region, endpoint, use_ssl, url_style
    memory_limit, threads   optional DuckDB limits
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import duckdb

__all__ = ["EXTENSIONS", "connect", "extension_path", "quote_ident", "quote_literal", "reset"]

# parquet is built into the duckdb package (statically linked)
EXTENSIONS = ("httpfs", "postgres_scanner", "ducklake")
_database: duckdb.DuckDBPyConnection | None = None


def extension_path(name: str) -> str:
    """The extension file shipped in the `duckdb-extension-<name>` wheel."""
    module = importlib.import_module(f"duckdb_extension_{name}")
    root = Path(module.__file__ or "").parent
    found = sorted(root.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
    if not found:
        raise RuntimeError(f"the {name} extension for DuckDB {duckdb.__version__} is not installed")
    return str(found[0])


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _loaded() -> duckdb.DuckDBPyConnection:
    global _database
    if _database is None:
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoinstall_known_extensions": "false",
            "autoload_known_extensions": "false",
        }
        _database = duckdb.connect(":memory:", config=config)
        for name in EXTENSIONS:
            _database.execute(f"LOAD {quote_literal(extension_path(name))}")
    return _database


def reset() -> None:
    """Detach what the last request attached (the lake, a replica file)."""
    if _database is None:
        return
    attached = _database.execute(
        "SELECT database_name FROM duckdb_databases() WHERE NOT internal"
        " AND database_name <> current_database()"
    ).fetchall()
    for (name,) in attached:
        _database.execute(f"DETACH DATABASE IF EXISTS {quote_ident(name)}")


def connect(
    lake: dict[str, Any],
    *,
    read_only: bool = False,
    data_path: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A connection with the lake attached as `lake`.

    `data_path` overrides where data files are read (a local mirror of the
    store, for replicas); the catalog still names them relative to the lake's
    own data path.
    """
    reset()
    con = _loaded().cursor()
    con.execute(f"SET threads = {int(lake.get('threads') or 2)}")
    con.execute(f"SET memory_limit = {quote_literal(str(lake.get('memory_limit') or '512MB'))}")
    # S3 multipart uploads buffer each part in DuckDB's memory: the part size is
    # max_filesize / 10,000 parts (800GB by default: 80 MB parts, which a 128 MB
    # limit cannot hold) times up to 50 uploading threads. The smallest allowed
    # file size gives ~5 MB parts (DuckLake's data files are far smaller), and
    # a few threads keep the parts in flight to ~20 MB.
    con.execute("SET s3_uploader_max_filesize = '50GB'")
    con.execute("SET s3_uploader_thread_limit = 4")
    s3 = lake.get("s3")
    if s3 and data_path is None:
        _s3_secret(con, s3)
    options = [f"METADATA_SCHEMA {quote_literal(lake['metadata_schema'])}"]
    if data_path is not None:
        options += [f"DATA_PATH {quote_literal(data_path)}", "OVERRIDE_DATA_PATH true"]
    else:
        options.append(f"DATA_PATH {quote_literal(lake['data_path'])}")
    if read_only:
        options.append("READ_ONLY")
    if lake.get("inlining_row_limit") is not None and not read_only:
        options.append(f"DATA_INLINING_ROW_LIMIT {int(lake['inlining_row_limit'])}")
    con.execute(
        f"ATTACH {quote_literal('ducklake:postgres:' + lake['catalog'])} AS lake"
        f" ({', '.join(options)})"
    )
    return con


def _s3_secret(con: duckdb.DuckDBPyConnection, s3: dict[str, Any]) -> None:
    parts = ["TYPE s3"]
    if s3.get("key_id"):
        parts += [f"KEY_ID {quote_literal(s3['key_id'])}", f"SECRET {quote_literal(s3['secret'])}"]
        if s3.get("session_token"):
            parts.append(f"SESSION_TOKEN {quote_literal(s3['session_token'])}")
    else:
        parts.append("PROVIDER credential_chain")
    if s3.get("region"):
        parts.append(f"REGION {quote_literal(s3['region'])}")
    if s3.get("endpoint"):
        parts.append(f"ENDPOINT {quote_literal(s3['endpoint'])}")
        parts.append(f"URL_STYLE {quote_literal(s3.get('url_style') or 'path')}")
    parts.append(f"USE_SSL {'true' if s3.get('use_ssl', True) else 'false'}")
    con.execute(f"CREATE OR REPLACE SECRET lake_s3 ({', '.join(parts)})")
