"""/openapi.json generates a typed client: openapi-typescript (pinned in
clients/typescript/package.json) turns it into types, and tsc compiles a
snippet that fails when a result, an error or a parameter is `unknown` or
loosely typed. Also: the document's statuses, media types and operation ids,
and /docs and /redoc served without any CDN."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testsupport.api_app import api_env, make_app_client

TS = Path(__file__).resolve().parents[2] / "clients" / "typescript"
BIN = TS / "node_modules" / ".bin"
WHITELIST = {
    "policies": {"default": {"tables": ["inventory"], "named_queries": ["*"]}},
    "named_queries": {
        "low_stock": {
            "description": "Inventory at or below a threshold.",
            "sql": "SELECT id, quantity FROM inventory WHERE quantity <= $threshold LIMIT $limit",
            "parameters": {
                "threshold": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
            },
        }
    },
}

SNIPPET = """
import type { components, paths } from "./api";

type IsUnknown<T> = unknown extends T ? true : false;
type No<T extends false> = T;

type Result = paths["/queries/low_stock"]["post"]["responses"][200]["content"]["application/json"];
type GetResult = paths["/queries/low_stock"]["get"]["responses"][200]["content"]["application/json"];
type AdHoc = paths["/query"]["post"]["responses"][200]["content"]["application/json"];
type Invalid = paths["/query"]["post"]["responses"][422]["content"]["application/json"];
type Limited = paths["/queries/low_stock"]["get"]["responses"][429]["content"]["application/json"];
type Body = NonNullable<paths["/queries/low_stock"]["post"]["requestBody"]>["content"]["application/json"];
type Query = NonNullable<paths["/queries/low_stock"]["get"]["parameters"]["query"]>;
type Metrics = paths["/metrics"]["get"]["responses"][200]["content"]["text/plain"];
export type Checks = [
  No<IsUnknown<Result>>, No<IsUnknown<GetResult>>, No<IsUnknown<AdHoc>>,
  No<IsUnknown<Invalid>>, No<IsUnknown<Body>>, No<IsUnknown<Metrics>>,
];

declare const result: Result;
const rows: number = result.row_count;
const types: string[] = result.columns.map((column) => column.type);
const next: string | undefined = result.next;
const version: string = result.data_version;
declare const invalid: Invalid;
const code: components["schemas"]["ErrorCode"] = invalid.error.code;
// @ts-expect-error: not a documented error code
const undocumented: components["schemas"]["ErrorCode"] = "no_such_code";
declare const limited: Limited;
const limitedCode: string = limited.error.code;
const body: Body = { params: { threshold: 5 }, format: "csv" };
// @ts-expect-error: threshold is an integer parameter
const badBody: Body = { params: { threshold: "5" } };
// @ts-expect-error: format is an enum
const badFormat: Query = { threshold: 1, format: "xml" };
const query: Query = { threshold: 1, limit: 5, format: "parquet" };
export { rows, types, next, version, code, undocumented, limitedCode, body, badBody, badFormat, query };
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory, issuer):
    env = api_env(tmp_path_factory.mktemp("openapi"), issuer, WHITELIST)
    with make_app_client(env) as client:
        yield client


def test_a_generated_typescript_client_is_typed(api, tmp_path):
    if not (BIN / "openapi-typescript").exists() or not (BIN / "tsc").exists():
        pytest.skip("clients/typescript/node_modules is needed (make test installs it)")
    (tmp_path / "openapi.json").write_bytes(api.get("/openapi.json").content)
    gen = subprocess.run(
        [str(BIN / "openapi-typescript"), "openapi.json", "-o", "api.ts"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stdout + gen.stderr
    (tmp_path / "check.ts").write_text(SNIPPET)
    tsc = subprocess.run(
        [str(BIN / "tsc"), "--noEmit", "--strict", "--target", "ES2022", "--module", "NodeNext",
         "--moduleResolution", "NodeNext", "check.ts"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr


def test_the_document_declares_what_the_api_answers(api):
    doc = api.get("/openapi.json").json()
    ops = {
        op["operationId"]: (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }
    expected = {"runQuery", "runQueryGet", "listNamedQueries", "runNamedQuery", "getNamedQuery"}
    expected |= {"runNamedQuery_low_stock", "getNamedQuery_low_stock", "getMetrics", "getHealth"}
    expected |= {"subscribeEvents", "createEventsTicket", "getSchema"}
    assert expected <= set(ops)
    assert "HTTPValidationError" not in str(doc)
    _, _, run = ops["runQuery"]
    responses = run["responses"]
    assert {"200", "304", "400", "401", "403", "409", "413", "422", "429", "503"} <= set(responses)
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert responses["422"]["content"]["application/json"]["schema"] == error_ref
    media = set(responses["200"]["content"])
    assert {"application/json", "text/csv", "application/x-ndjson"} <= media
    assert {"application/vnd.apache.arrow.stream", "application/vnd.apache.parquet"} <= media
    assert "404" in ops["runNamedQuery_low_stock"][2]["responses"]
    assert set(ops["getMetrics"][2]["responses"]["200"]["content"]) == {"text/plain"}
    params = {p["name"]: p for p in ops["getNamedQuery_low_stock"][2]["parameters"]}
    assert params["threshold"]["required"] is True
    assert params["limit"]["schema"] == {
        "type": "integer", "format": "int64", "minimum": 1, "maximum": 100, "default": 10
    }  # fmt: skip
    assert "arrow" in params["format"]["schema"]["enum"]
    codes = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    assert {"stale_cursor", "invalid_cursor", "rate_limited", "table_not_allowed"} <= codes


def test_docs_and_redoc_load_their_assets_from_the_api(api):
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        urls += re.findall(r"""url: ?['"]([^'"]+)['"]""", html)
        assert urls, html
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], (page, urls)
        for url in urls:
            r = api.get(url)
            assert r.status_code == 200 and len(r.content) > 100, url
    assert api.get("/docs/assets/../../etc/passwd").status_code == 404
