"""The TypeScript client in a real browser: headless Chromium loads a page
served from another origin than the API, the page imports the built client,
runs a named query with a token and renders the rows, revalidates it (304),
subscribes to `/events` (EventSource with a ticket) and re-renders itself when
the API announces a new data version after a publish.

Fails on any console error, page error or failed request. A second page,
from an origin the API does not list in CORS_ORIGINS, shows that a CORS
failure is caught. Needs Debian's chromium (`make test` installs it as
root) and the TypeScript client's node_modules (`make test` installs them).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from testsupport.client_api import ClientTestApi

ROOT = Path(__file__).resolve().parents[2]
TS = ROOT / "clients" / "typescript"
HERE = Path(__file__).resolve().parent


def _requirements() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    node = shutil.which("node")
    if node is None or not (TS / "node_modules" / "playwright-core").is_dir():
        pytest.skip("node and clients/typescript/node_modules are needed (make test installs them)")
    return chromium, node


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The page and the built client, as a static site."""
    _requirements()
    subprocess.run(["npm", "run", "--silent", "build"], cwd=TS, check=True, timeout=120)
    root = tmp_path_factory.mktemp("site")
    shutil.copy(HERE / "page" / "index.html", root / "index.html")
    shutil.copytree(TS / "dist", root / "client")
    return root


@pytest.fixture(scope="module")
def static_servers(site: Path) -> Iterator[tuple[str, str]]:
    """Two origins serving the site: one the API allows, one it does not."""
    handler = functools.partial(_Quiet, directory=str(site))
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        allowed, refused = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield allowed, refused
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def browser_api(
    tmp_path_factory: pytest.TempPathFactory, static_servers: tuple[str, str]
) -> Iterator[ClientTestApi]:
    allowed, _ = static_servers
    with ClientTestApi(tmp_path_factory.mktemp("browser-api"), cors_origins=[allowed]) as api:
        yield api


def _env(page_origin: str, api: ClientTestApi, token: str, chromium: str) -> dict[str, str]:
    return {
        **os.environ,
        "PAGE_URL": page_origin + "/index.html",
        "API_URL": api.url,
        "TOKEN": token,
        "CHROMIUM": chromium,
        "PLAYWRIGHT_FROM": str(TS / "package.json"),
    }


def _load(page_origin: str, api: ClientTestApi, token: str) -> dict:
    chromium, node = _requirements()
    run = subprocess.run(
        [node, str(HERE / "run_page.mjs")],
        env=_env(page_origin, api, token, chromium),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _load_then_publish(page_origin: str, api: ClientTestApi, token: str) -> tuple[dict, dict, str]:
    """The page's report once loaded and subscribed, the version published
    then, and its report once it shows that version."""
    chromium, node = _requirements()
    env = {**_env(page_origin, api, token, chromium), "WAIT_FOR_VERSION": "1"}
    with subprocess.Popen(
        [node, str(HERE / "run_page.mjs")],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            first = json.loads(proc.stdout.readline() or "{}")
            assert first.get("state") == "done", (first, proc.stderr.read() if first == {} else "")
            published = api.publish()
            proc.stdin.write(published + "\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=120)
        except BaseException:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    return first, json.loads(out.strip().splitlines()[-1]), published


def test_page_on_another_origin_queries_revalidates_and_follows_new_versions(
    browser_api, static_servers
):
    allowed, _ = static_servers
    assert allowed.split(":")[-1] != browser_api.url.split(":")[-1]  # a different origin
    token = browser_api.token()
    loaded, updated, published = _load_then_publish(allowed, browser_api, token)

    for report in (loaded, updated):
        assert report["consoleErrors"] == [], report
        assert report["pageErrors"] == [], report
        assert report["failedRequests"] == [], report
        assert report["state"] == "done", report["error"]
    assert loaded["revalidated"] == "true"  # the second call was a 304 (ETag readable, allowed)
    assert loaded["etag"].startswith('W/"')
    assert loaded["announced"] == loaded["version"]  # /events sent the version in service

    def expected_rows() -> dict:
        answer = httpx.post(
            browser_api.url + "/queries/low_stock",
            json={"params": {"threshold": 5, "limit": 10}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        ).json()
        assert answer["data"], "the named query should return rows"
        return answer

    assert loaded["version"] != published
    assert updated["version"] == updated["announced"] == published
    expected = expected_rows()
    assert expected["data_version"] == published
    assert updated["rows"] == [
        [str(r["id"]), r["warehouse"], str(r["quantity"])] for r in expected["data"]
    ]
    assert updated["rows"] != loaded["rows"]  # the new snapshot has other rows


def test_an_origin_missing_from_cors_origins_is_caught(browser_api, static_servers):
    _, refused = static_servers
    report = _load(refused, browser_api, browser_api.token())
    assert report["state"] == "error"
    assert report["error"].startswith("network_error:")
    assert report["rows"] == []
    assert any("CORS" in e for e in report["consoleErrors"]), report
