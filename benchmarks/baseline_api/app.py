"""The seed's API design, rebuilt for the benchmark (not for production).

What the seed did, on purpose: a new DuckDB connection per request, the query
executed inside the async handler (blocking the event loop), `fetchdf()` and
`to_dict(orient="records")`, FastAPI's default JSON encoding, and SQL checked
with regular expressions. Auth is on (RS256 JWT checked against the same JWKS
as our API), so both servers do the same security work per request.

Settings: BASELINE_DB (the snapshot file), AUTH0_JWKS_URL, AUTH0_ISSUER,
AUTH0_API_AUDIENCE. Run: gunicorn -w 2 -k uvicorn_worker.UvicornWorker
benchmarks.baseline_api.app:app
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import duckdb
import jwt
from fastapi import FastAPI, Header, HTTPException, Query

app = FastAPI(title="seed-style baseline")

DB_PATH = os.environ.get("BASELINE_DB", "analytics.db")
_jwks = jwt.PyJWKClient(os.environ.get("AUTH0_JWKS_URL", ""), cache_keys=True)
_ISSUER = os.environ.get("AUTH0_ISSUER", "")
_AUDIENCE = os.environ.get("AUTH0_API_AUDIENCE", "")

_FORBIDDEN = re.compile(
    r"\b(INSERT|UPDATE|DELETE|DROP|CREATE|ALTER|TRUNCATE|ATTACH|COPY|EXPORT|PRAGMA|INSTALL|LOAD|CALL|SET)\b",
    re.IGNORECASE,
)
_SELECT = re.compile(r"^\s*(WITH|SELECT)\b", re.IGNORECASE)


def _verify(authorization: str | None) -> dict[str, Any]:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise HTTPException(status_code=401, detail="missing token")
    token = authorization.split(" ", 1)[1]
    try:
        key = _jwks.get_signing_key_from_jwt(token)
        return jwt.decode(token, key.key, algorithms=["RS256"], audience=_AUDIENCE, issuer=_ISSUER)
    except jwt.PyJWTError as exc:
        raise HTTPException(status_code=401, detail=str(exc)) from None


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/query")
async def query(q: str = Query(...), authorization: str | None = Header(None)) -> dict[str, Any]:
    _verify(authorization)
    if not _SELECT.match(q) or _FORBIDDEN.search(q):
        raise HTTPException(status_code=400, detail="only SELECT queries are allowed")
    started = time.time()
    con = duckdb.connect(DB_PATH, read_only=True)
    try:
        df = con.execute(q).fetchdf()
    finally:
        con.close()
    data = df.to_dict(orient="records")
    return {
        "success": True,
        "data": data,
        "columns": list(df.columns),
        "row_count": len(data),
        "execution_time_ms": (time.time() - started) * 1000,
    }
