"""Helpers for the static deployment checks (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]


def settings_aliases(cls: type[BaseSettings]) -> dict[str, tuple[str, ...]]:
    """Field name -> the environment variable names it is read from (first one preferred)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            out[name] = tuple(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            out[name] = (alias,)
        else:
            out[name] = (name.upper(),)
    return out


# The modules that read Gunicorn's variables (they are not settings fields).
GUNICORN_MODULES = ("api_service.ops.gunicorn_conf", "api_service.ops.bind_check")


def gunicorn_env_names() -> set[str]:
    """Environment variables the Gunicorn configuration reads (GUNICORN_MODULES)."""
    pattern = (
        r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']|os\.environ\[\s*["'](\w+)["']\s*\]"""
    )
    names: set[str] = set()
    for module in GUNICORN_MODULES:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{module} not importable"
        text = Path(spec.origin).read_text(encoding="utf-8")
        names |= {a or b for a, b in re.findall(pattern, text)}
    return names


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def aliases_of() -> Callable[[type[BaseSettings]], dict[str, tuple[str, ...]]]:
    return settings_aliases


@pytest.fixture
def gunicorn_names() -> set[str]:
    return gunicorn_env_names()
