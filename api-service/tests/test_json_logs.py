"""With LOG_JSON=true every line a running API writes is one JSON object:
the app's, Gunicorn's master and error log, and Uvicorn's workers'."""

from __future__ import annotations

import json

import httpx

from testsupport.api_app import api_env
from testsupport.api_server import ApiServer


def test_every_line_of_a_running_api_is_json(tmp_path, issuer):
    env = api_env(
        tmp_path,
        issuer,
        {"policies": {"default": {"tables": ["*"]}}},
        LOG_JSON="true",
        LOG_LEVEL="INFO",
    )
    log = tmp_path / "api.log"
    server = ApiServer(env, workers=2, log_path=log).start()
    try:
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        assert httpx.get(server.url + "/query?q=SELECT%201", timeout=10).status_code == 401
        token = issuer.mint(sub="json-logs")
        answer = httpx.get(
            server.url + "/query?q=SELECT%201",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert answer.status_code == 200
    finally:
        server.stop()  # the shutdown lines (Gunicorn's master, Uvicorn's workers) too
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    loggers = set()
    for line in lines:
        record = json.loads(line)  # fails on the first plain-text line
        loggers.add(record.get("logger"))
        # Log collectors tell the services apart by it: every thread, the master too.
        assert record.get("service") == "api-service", line
    assert any(name and name.startswith("gunicorn") for name in loggers), loggers
    assert any(name and name.startswith("uvicorn") for name in loggers), loggers
