"""Every variable the services read is in .env.example and docs/deployment-guide.md,
and .env.example names nothing the services (or docker compose) do not read."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from api_service.settings import ApiSettings
from etl_service.settings import EtlSettings

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
GUIDE = ROOT / "docs" / "deployment-guide.md"

Aliases = Callable[[type[BaseSettings]], dict[str, tuple[str, ...]]]


@pytest.fixture
def read_variables(aliases_of: Aliases, gunicorn_names: set[str]) -> set[str]:
    names = set(gunicorn_names)
    for cls in (EtlSettings, ApiSettings):
        for choices in aliases_of(cls).values():
            names.update(choices)
    return names


def env_example_assignments() -> set[str]:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return set(re.findall(r"^#?[ \t]*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def compose_interpolations() -> set[str]:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    return set(re.findall(r"\$\{([A-Za-z_]\w*)", text))


def test_every_setting_is_in_env_example(read_variables: set[str]) -> None:
    missing = sorted(read_variables - env_example_assignments())
    assert not missing, f"add to .env.example (as `# NAME=default`): {missing}"


def test_env_example_is_all_comments() -> None:
    # Both services and the test suite read ./.env: a plain copy must change nothing.
    live = [
        line
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert not live, f".env.example lines must be commented out: {live}"


def test_env_example_names_only_real_variables(read_variables: set[str]) -> None:
    stale = sorted(env_example_assignments() - read_variables - compose_interpolations())
    assert not stale, f".env.example names variables nothing reads: {stale}"


def test_every_setting_is_in_the_deployment_guide(read_variables: set[str]) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    missing = sorted(name for name in read_variables if not re.search(rf"\b{name}\b", text))
    assert not missing, f"document in docs/deployment-guide.md: {missing}"
