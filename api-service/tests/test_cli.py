"""`analytics-api check-config` catches what start-up would refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def _check(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AUTH0_DOMAIN": "tenant.example.com",
        "AUTH0_API_AUDIENCE": "https://api",
        **env_extra,
    }
    return subprocess.run(
        [str(BIN / "analytics-api"), "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bundled_configuration_is_ok():
    result = _check({})
    assert result.returncode == 0, result.stderr
    assert "configuration ok" in result.stdout


def test_named_query_the_guard_refuses_is_reported(tmp_path):
    path = tmp_path / "wl.json"
    path.write_text(
        json.dumps(
            {
                "policies": {"default": {"tables": ["inventory"], "named_queries": ["wipe"]}},
                "named_queries": {"wipe": {"sql": "DELETE FROM inventory"}},
            }
        )
    )
    result = _check({"QUERY_WHITELIST_PATH": str(path)})
    assert result.returncode == 2
    assert "wipe" in result.stderr


def test_missing_settings_name_the_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTH0_")}
    result = subprocess.run(
        [str(BIN / "analytics-api"), "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AUTH0_API_AUDIENCE" in result.stderr
    assert "Traceback" not in result.stderr
