"""The web console in a real browser: headless Chromium (Debian's, driven by
playwright-core) against the API under Gunicorn, signing in through the
development issuer with the authorization code flow and PKCE.

As an analyst: the overview shows the served version, the schema lists the
tables, a query is cancelled and another runs into the paged grid and a
chart, the CSV download equals the API's CSV answer, a named query runs from
its generated form, the overview follows a publish, and there are no admin
actions (a forced call answers 403 insufficient_scope). As an operator: the
admin actions are there and a dead-letter retry goes through the worker's
queue (real PostgreSQL) to its outcome. Both fail on any browser console
error, page error or failed request; each page's screenshot is kept under
the test's tmp dir and checked not to be blank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api_service.console.mount import STATIC_DIR
from api_service.dev.sign_in import DEV_USERS
from etl_service.control.commands import CommandQueue
from etl_service.state import StateStore
from testsupport.client_api import ClientTestApi

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PLAYWRIGHT_FROM = ROOT / "clients" / "typescript" / "package.json"
QUERY_SQL = "SELECT id, warehouse, quantity FROM inventory ORDER BY id LIMIT 120"
# Seconds of work for DuckDB (a four-way cross join), so Cancel has something to stop.
SLOW_SQL = "SELECT count(*) AS n FROM inventory a, inventory b, inventory c, inventory d"


def _requirements() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    node = shutil.which("node")
    if node is None or not (PLAYWRIGHT_FROM.parent / "node_modules" / "playwright-core").is_dir():
        pytest.skip("node and clients/typescript/node_modules are needed (make test installs them)")
    if not (STATIC_DIR / "index.html").is_file():
        pytest.skip("the console is not built (make console; make test builds it)")
    return chromium, node


@pytest.fixture(scope="module")
def console_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientTestApi]:
    _requirements()
    with ClientTestApi(
        tmp_path_factory.mktemp("console-api"), extra_env={"CONSOLE_POLL_SECONDS": "0.5"}
    ) as api:
        yield api


def _visit(
    api: ClientTestApi, role: str, artifacts: Path, answer: dict[str, Any]
) -> dict[str, Any]:
    """Runs console_flow.mjs as `role`; `answer` maps each of its needs to a function."""
    chromium, node = _requirements()
    artifacts.mkdir(parents=True, exist_ok=True)
    _, scopes = DEV_USERS[role]
    env = {
        **os.environ,
        "CONSOLE_URL": api.url + "/console/",
        "CHROMIUM": chromium,
        "PLAYWRIGHT_FROM": str(PLAYWRIGHT_FROM),
        "ARTIFACTS": str(artifacts),
        "ROLE": role,
        "QUERY_SQL": QUERY_SQL,
        "SLOW_SQL": SLOW_SQL,
        "FORCE_TOKEN": api.token(scopes=scopes),
    }
    with subprocess.Popen(
        [node, str(HERE / "console_flow.mjs")],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                message = json.loads(line)
                if "report" in message:
                    report: dict[str, Any] = message["report"]
                    break
                proc.stdin.write(json.dumps(answer[message["need"]](message)) + "\n")
                proc.stdin.flush()
            else:
                raise AssertionError(
                    f"the browser run ended without a report: {proc.stderr.read()}"
                )
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
    assert report["state"] == "done", report.get("error")
    assert report["consoleErrors"] == [], report["consoleErrors"]
    assert report["pageErrors"] == [], report["pageErrors"]
    assert report["failedRequests"] == [], report["failedRequests"]
    for name, shot in report["screenshots"].items():
        assert Path(shot["path"]).is_file()
        assert (shot["width"], shot["height"]) == (1280, 800)
        # A blank or single-colour page has no spread; every console page has text and panels.
        assert shot["stddev"] > 15 and shot["colours"] > 20, (name, shot)
    return report


def _signed_in_as(report: dict[str, Any], api: ClientTestApi, role: str) -> None:
    assert report["version"] == api.manifest_version or report["version"] == api.data_version()
    # Signed in by code + PKCE, and nothing kept in the browser's storage.
    assert report["storage"] == {"local": 0, "session": 0, "cookie": ""}
    assert "code=" not in report["url"] and report["url"].endswith("/console/#overview")
    assert "script-src 'self'" in report["csp"] and "unsafe-inline" not in report["csp"]
    # Live from GET /events where the server has it, else polling /health.
    endpoints = httpx.get(api.url + "/console/config.json", timeout=10).json()["endpoints"]
    live = "live (server-sent events)" if endpoints["events"] else "polling /health every"
    assert report["liveMode"].startswith(live), report["liveMode"]


def test_an_analyst_queries_charts_downloads_and_sees_a_publish(console_api, tmp_path):
    api = console_api
    token = api.token()
    auth = {"Authorization": f"Bearer {token}"}
    published: list[str] = []
    before: dict[str, Any] = {}

    def publish(_: object) -> dict[str, str]:
        # What the API answered for the data the browser saw, before it changes.
        before["schema"] = httpx.get(api.url + "/schema", headers=auth, timeout=30).json()
        before["query"] = httpx.post(
            api.url + "/query", json={"sql": QUERY_SQL}, headers=auth, timeout=30
        ).json()
        before["csv"] = httpx.post(
            api.url + "/query", json={"sql": QUERY_SQL, "format": "csv"}, headers=auth, timeout=30
        ).content
        before["named"] = httpx.post(
            api.url + "/queries/low_stock",
            json={"params": {"threshold": 5, "limit": 10}},
            headers=auth,
            timeout=30,
        ).json()
        published.append(api.publish())
        return {"data_version": published[-1]}

    report = _visit(api, "analyst", tmp_path / "analyst", {"publish": publish})
    _signed_in_as(report, api, "analyst")

    # No admin actions for this user, and a forced call is refused in the error shape.
    assert report["adminPanel"] is False and report["adminButtons"] == []
    assert report["forced"]["status"] == 403
    assert report["forced"]["body"]["success"] is False
    assert report["forced"]["body"]["error"]["code"] == "insufficient_scope"
    assert report["expectedErrorsNotSeen"] == []

    schema = before["schema"]
    assert set(report["schemaTables"]) == set(schema["tables"]) | set(schema["models"])
    assert report["inventoryColumns"] == [
        [c["name"], c["type"]] for c in schema["tables"]["inventory"]["columns"]
    ]

    assert report["cancel"]["state"] == "cancelled", report["cancel"]
    assert report["cancel"]["error"].startswith("aborted"), report["cancel"]

    expected = before["query"]
    assert report["headers"] == ["id", "warehouse", "quantity"]
    assert report["summary"].startswith("120 rows")
    assert report["pageLabel"] == "Rows 1\u201350 of 120"
    assert report["secondPageLabel"] == "Rows 51\u2013100 of 120"
    assert report["firstPage"] == [
        [str(r["id"]), r["warehouse"], str(r["quantity"])] for r in expected["data"][:50]
    ]
    assert report["chartKind"] == "bar"  # a text column and numbers
    assert report["chartInk"] > 1000  # the canvas has bars drawn on it

    assert report["downloadName"] == "query-result.csv"
    assert Path(report["downloadPath"]).read_bytes() == before["csv"]
    assert before["csv"].count(b"\n") == 121  # the header and 120 rows

    named = before["named"]
    assert named["data"]
    assert report["namedRows"] == [
        [str(r["id"]), str(r["product_id"]), r["warehouse"], str(r["quantity"])]
        for r in named["data"]
    ]

    assert published and report["versionAfterPublish"] == published[-1] != report["version"]
    assert report["firstFocusable"] == "Skip to content"
    assert (report["afterSkipTab"], report["skipTarget"]) == ("Overview", "main")
    assert report["unlabelledControls"] == []
    assert set(report["screenshots"]) >= {"sign-in", "overview", "schema", "query", "named"}


@pytest.fixture
def operator_api(tmp_path: Path, pg_url: str) -> Iterator[tuple[ClientTestApi, StateStore]]:
    _requirements()
    state = StateStore(pg_url)  # the ETL's migrations create etl_commands
    try:
        with ClientTestApi(
            tmp_path / "api", workers=1, extra_env={"ETL_STATE_DATABASE_URL": pg_url}
        ) as api:
            yield api, state
    finally:
        state.close()


def test_an_operator_retries_a_dead_letter_through_the_worker_queue(operator_api, tmp_path):
    api, state = operator_api
    queue = CommandQueue(state.engine)

    def finish_command(_: object) -> dict[str, bool]:
        # The worker's side, as WorkerControl.between_cycles runs it.
        command = queue.claim_next("test-worker")
        assert command is not None and command.kind == "dlq-retry" and command.args == {"id": 1}
        queue.finish(command.id, "done", {"status": "success", "version": "v-test"})
        return {"ok": True}

    report = _visit(
        api,
        "operator",
        tmp_path / "operator",
        {"finish-command": finish_command, "publish": lambda _: {"data_version": api.publish()}},
    )
    _signed_in_as(report, api, "operator")
    assert report["adminButtons"] == ["Roll back", "Retry", "Discard", "Backfill"]
    assert "pending" in report["commandPending"]
    assert report["commandDone"].endswith('done: {"status":"success","version":"v-test"}')
    with state.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT submitted_by, status FROM etl_commands")).one()
    assert row.submitted_by == "api:dev-operator" and row.status == "done"
