"""`GET /metrics`: request counts and latency by route and status, query time,
rows, cache hits, rate-limit refusals, data version and age; under Gunicorn
the numbers add up across workers."""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from testsupport.api_app import make_app_client, serving_env
from testsupport.api_server import ApiServer, request_records
from testsupport.publishing import publish_file
from testsupport.serving import build_database


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def auth_env(issuer) -> dict[str, str]:
    return issuer.settings_env()


def test_metrics_report_requests_queries_cache_and_data(tmp_path, issuer):
    manifest = publish_file(
        build_database(tmp_path / "db.db"), tmp_path / "store", tmp_path / "work"
    )
    with make_app_client(
        serving_env(
            tmp_path / "store", tmp_path / "data", auth_env(issuer), RATE_LIMIT_REQUESTS="4"
        )
    ) as client:
        before = client.get("/metrics").text
        headers = {"Authorization": f"Bearer {issuer.mint(sub='metrics-user')}"}
        codes = [
            client.get("/query", params={"q": "SELECT 1 AS one"}, headers=headers).status_code
            for _ in range(5)
        ]
        assert codes == [200, 200, 200, 200, 429]
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        after = r.text

        def delta(name: str, **labels: str) -> float:
            return sample(after, name, **labels) - sample(before, name, **labels)

        assert delta("api_requests_total", route="/query", method="GET", status="200") == 4
        assert delta("api_requests_total", route="/query", method="GET", status="429") == 1
        assert delta("api_request_duration_seconds_count", route="/query", status="200") == 4
        assert delta("api_rate_limit_refusals_total") == 1
        assert delta("api_result_cache_requests_total", result="miss") == 1
        assert delta("api_result_cache_requests_total", result="hit") == 3
        assert delta("api_query_duration_seconds_count") == 1
        assert delta("api_query_rows_returned_sum") == 1
        assert sample(after, "api_data_version_info", version=manifest.version) == 1
        assert 0 <= sample(after, "api_data_age_seconds") < 600
        pid = str(os.getpid())  # in-process app: this process is the worker
        assert sample(after, "api_snapshot_swaps_total", worker_pid=pid) == 1
        assert sample(after, "api_snapshot_verification_failures_total", worker_pid=pid) == 0
        # Unmatched paths do not create a label per URL.
        client.get("/no/such/path/123")
        assert 'route="unmatched"' in client.get("/metrics").text


def test_metrics_add_up_across_gunicorn_workers(tmp_path, issuer):
    publish_file(build_database(tmp_path / "db.db"), tmp_path / "store", tmp_path / "work")
    env = {
        **auth_env(issuer),
        "STORAGE_URL": (tmp_path / "store").resolve().as_uri(),
        "DATA_DIR": str(tmp_path / "data"),
        "RATE_LIMIT_REQUESTS": "100000",
        "LOG_JSON": "true",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "api.log"
    api = ApiServer(env, workers=2, log_path=log_path).start()
    try:
        headers = {"Authorization": f"Bearer {issuer.mint(sub='gunicorn-metrics')}"}

        def query(n: int) -> str:
            r = httpx.get(
                api.url + "/query", params={"q": f"SELECT {n} AS n"}, headers=headers, timeout=30
            )
            assert r.status_code == 200, r.text
            return r.headers["X-Request-ID"]

        # Concurrent new connections spread the queries over both workers;
        # the request log says which worker answered each one.
        sent: list[str] = []
        answered_by: set[int] = set()
        with ThreadPoolExecutor(4) as pool:
            while len(answered_by) < 2 and len(sent) < 96:
                sent += pool.map(query, range(len(sent), len(sent) + 12))
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # the log lines are written after the answer
                    pids = {r["request_id"]: r["pid"] for r in request_records(log_path)}
                    if all(rid in pids for rid in sent):
                        break
                    time.sleep(0.1)
                answered_by = {pids[rid] for rid in sent}
        assert len(answered_by) == 2, f"one worker answered all {len(sent)} queries"

        # Every scrape, whichever worker answers it, counts the queries of both.
        scraped_by: set[str] = set()
        for _ in range(100):
            text = httpx.get(api.url + "/metrics", timeout=10).text
            total = sample(text, "api_requests_total", route="/query", method="GET", status="200")
            assert total == len(sent)
            scraped_by |= set(re.findall(r'api_snapshot_swaps_total\{worker_pid="(\d+)"', text))
            if len(scraped_by) == 2:
                break
        assert scraped_by == {str(pid) for pid in answered_by}
    finally:
        api.stop()
