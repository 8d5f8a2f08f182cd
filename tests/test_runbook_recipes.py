"""The runbook's recipes are the commands the tests run: every `analytics-etl` /
`analytics-api` line of docs/runbook.md's bash blocks runs here, in the order it
is written, against a running worker (real process; PostgreSQL source and
state, SeaweedFS store, the dev issuer). Only the runbook's placeholders are
filled in (ENTRY_ID, the example version id); table names and options are the
runbook's own. A recipe that changes is run as changed; one that fails fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import sqlalchemy as sa

from etl_service.demo_source import create_demo_source
from etl_service.state import StateStore
from testsupport.doc_commands import DocCommand, parse
from testsupport.processes import stop_process
from testsupport.snapshots import ETL, fetch_current_verified, store_from_env, wait_for

RUNBOOK = Path(__file__).resolve().parents[1] / "docs" / "runbook.md"
BIN = Path(ETL).parent
EXAMPLE_VERSION = "20260101T120000Z"  # the runbook's placeholder version id


def test_every_runbook_recipe_runs_as_written(platform_env, pg_url, tmp_path):
    recipes = [c for c in parse(RUNBOOK) if not c.planned]
    assert len(recipes) >= 15, recipes
    create_demo_source(pg_url).dispose()
    env = {
        **platform_env,
        "DATABASE_URL": pg_url,
        "SYNC_INTERVAL_SECONDS": "3600",  # one cycle at start; the rest are the recipes
        "SYNC_SETTLE_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
    }
    with (tmp_path / "worker.log").open("ab") as out:
        worker = subprocess.Popen([ETL, "run"], env={**os.environ, **env}, stdout=out, stderr=out)
    state = StateStore(pg_url)
    store = store_from_env(env)
    try:
        wait_for(lambda: any(r["status"] != "running" for r in state.recent_runs(5)), 180)
        first_version = fetch_current_verified(store, tmp_path / "v")[0].version

        def run(recipe: DocCommand) -> subprocess.CompletedProcess[str]:
            words = list(recipe.words)
            if "ENTRY_ID" in words:
                # A table that failed its retries earlier (recorded as the ETL records it).
                entry = state.dead_letter(None, "orders", "SourceError: permission denied", 4)
                words[words.index("ENTRY_ID")] = str(entry)
            if EXAMPLE_VERSION in words:
                words[words.index(EXAMPLE_VERSION)] = first_version
            return subprocess.run(
                [str(BIN / recipe.cli), *words],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=300,
            )

        for recipe in recipes:
            result = run(recipe)
            where = f"{recipe.line!r}: {result.stderr[-1500:]}"
            assert result.returncode == 0, where
            assert "Traceback" not in result.stderr, where
            if recipe.words[:1] == ("rollback",):
                assert json.loads(result.stdout.splitlines()[-1])["version"] == first_version
                assert fetch_current_verified(store, tmp_path / "v")[0].version == first_version
            if recipe.words[:1] == ("backfill",):
                report = json.loads(result.stdout.splitlines()[-1])
                assert report["rows"][recipe.words[1]]["mode"] == "full", where
            if recipe.words[:2] == ("dlq", "discard"):
                assert json.loads(result.stdout.splitlines()[-1])["status"] == "discarded"
        with state.engine.connect() as conn:
            kinds = {r[0] for r in conn.execute(sa.text("SELECT kind FROM etl_commands"))}
        # The data-changing recipes went through the worker, not around it.
        assert {"backfill", "sync", "reconcile", "rollback", "dlq-retry", "dlq-discard"} <= kinds
        assert worker.poll() is None
    finally:
        stop_process(worker, timeout=30)
        state.close()
