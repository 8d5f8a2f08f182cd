"""Admin actions through the ETL worker's queue: `POST|GET /admin/commands`.

A caller without `admin:etl` is refused 403 `insufficient_scope` whatever the
configuration; with it, a command becomes a pending row in the ETL's real
state database (PostgreSQL, migrated by the ETL itself), which the worker's
own queue code claims and finishes, and the API then shows the outcome.
Bad commands are refused 422 and queue nothing; a state database that does
not answer is a 503 in the error shape, and the API keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from etl_service.control.commands import CommandQueue
from etl_service.state import StateStore
from testsupport.api_app import api_env, make_app_client
from testsupport.ports import free_port

WHITELIST = {"policies": {"default": {"tables": ["inventory"]}}}
ADMIN = "read:analytics admin:etl"


@pytest.fixture
def state(pg_url: str) -> Iterator[StateStore]:
    store = StateStore(pg_url)  # the ETL's migrations create etl_commands
    yield store
    store.close()


@pytest.fixture
def admin_api(tmp_path: Path, issuer, pg_url: str, state: StateStore) -> Iterator[httpx.Client]:
    env = api_env(tmp_path, issuer, WHITELIST, ETL_STATE_DATABASE_URL=pg_url)
    with make_app_client(env) as client:
        yield client


def _auth(issuer, scopes: str, sub: str = "ops-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.mint(sub=sub, scopes=scopes)}"}


def _rows(state: StateStore) -> list[sa.Row]:
    with state.engine.connect() as conn:
        return list(
            conn.execute(sa.text("SELECT kind, args, status, submitted_by FROM etl_commands"))
        )


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code
    assert body["error"]["request_id"]


def test_without_the_admin_scope_every_admin_call_is_403(admin_api, issuer, state):
    reader = _auth(issuer, "read:analytics read:schema read:status")
    calls = [
        admin_api.post(
            "/admin/commands",
            json={"kind": "backfill", "args": {"table": "inventory"}},
            headers=reader,
        ),
        admin_api.get("/admin/commands", headers=reader),
        admin_api.get("/admin/commands/1", headers=reader),
    ]
    for response in calls:
        _refused(response, 403, "insufficient_scope")
        assert "admin:etl" in response.json()["error"]["message"]
    assert _rows(state) == []
    _refused(admin_api.get("/admin/commands"), 401, "unauthorized")


def test_a_command_is_queued_claimed_by_the_worker_and_its_outcome_shown(admin_api, issuer, state):
    admin = _auth(issuer, ADMIN)
    answer = admin_api.post(
        "/admin/commands",
        json={"kind": "rollback", "args": {"version": "20261201T120000Z"}},
        headers=admin,
    )
    assert answer.status_code == 202, answer.text
    command = answer.json()["command"]
    assert (command["kind"], command["args"], command["status"]) == (
        "rollback",
        {"version": "20261201T120000Z"},
        "pending",
    )
    assert command["submitted_by"] == "api:ops-1"

    # The worker's side, with the worker's own queue code.
    queue = CommandQueue(state.engine)
    claimed = queue.claim_next("worker-test")
    assert claimed is not None and claimed.id == command["id"]
    assert (
        admin_api.get(f"/admin/commands/{command['id']}", headers=admin).json()["command"]["status"]
        == "running"
    )
    queue.finish(claimed.id, "done", {"status": "current", "version": "20261201T120000Z"})

    shown = admin_api.get(f"/admin/commands/{command['id']}", headers=admin).json()["command"]
    assert shown["status"] == "done" and shown["outcome"]["version"] == "20261201T120000Z"
    assert shown["finished_at"] is not None
    listed = admin_api.get("/admin/commands", headers=admin).json()["commands"]
    assert [c["id"] for c in listed] == [command["id"]]
    _refused(admin_api.get("/admin/commands/999", headers=admin), 404, "unknown_command")


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "sync", "args": {}},  # not an admin action of the console
        {"kind": "rollback", "args": {}},
        {"kind": "rollback", "args": {"version": "v1; rm -rf /"}},
        {"kind": "dlq-retry", "args": {"id": 0}},
        {"kind": "dlq-discard", "args": {"id": "1", "extra": True}},
        {"kind": "backfill", "args": {"table": "inventory; DROP TABLE x"}},
        {"kind": "backfill", "args": {"table": "inventory"}, "priority": 1},
        {},
    ],
)
def test_a_bad_command_is_refused_and_queues_nothing(admin_api, issuer, state, body):
    _refused(
        admin_api.post("/admin/commands", json=body, headers=_auth(issuer, ADMIN)),
        422,
        "invalid_request",
    )
    assert _rows(state) == []


def test_without_a_state_database_admin_calls_say_so(tmp_path, issuer):
    with make_app_client(api_env(tmp_path, issuer, WHITELIST)) as client:
        _refused(
            client.get("/admin/commands", headers=_auth(issuer, ADMIN)),
            501,
            "commands_not_configured",
        )
        _refused(
            client.get("/admin/commands", headers=_auth(issuer, "read:analytics")),
            403,
            "insufficient_scope",
        )


def test_a_state_database_that_does_not_answer_is_503_and_the_api_keeps_serving(tmp_path, issuer):
    dead = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    with make_app_client(
        api_env(tmp_path, issuer, WHITELIST, ETL_STATE_DATABASE_URL=dead)
    ) as client:
        response = client.post(
            "/admin/commands",
            json={"kind": "dlq-retry", "args": {"id": 3}},
            headers=_auth(issuer, ADMIN),
        )
        _refused(response, 503, "commands_unavailable")
        assert "127.0.0.1" not in response.text  # the URL (and any password) stays in the server
        assert client.get("/health").status_code == 200
