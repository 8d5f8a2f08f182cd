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


def gunicorn_env_names() -> set[str]:
    """Environment variables api_service.ops.gunicorn_conf reads (they are not settings fields)."""
    spec = importlib.util.find_spec("api_service.ops.gunicorn_conf")
    assert spec is not None and spec.origin, "api_service.ops.gunicorn_conf not importable"
    text = Path(spec.origin).read_text(encoding="utf-8")
    pattern = (
        r"""os\.(?:environ\.get|getenv)\(\s*["'](\w+)["']|os\.environ\[\s*["'](\w+)["']\s*\]"""
    )
    return {a or b for a, b in re.findall(pattern, text)}


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def aliases_of() -> Callable[[type[BaseSettings]], dict[str, tuple[str, ...]]]:
    return settings_aliases


@pytest.fixture
def gunicorn_names() -> set[str]:
    return gunicorn_env_names()
