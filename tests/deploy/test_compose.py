"""docker-compose.yml: parses, every service is healthchecked and pinned, and the etl
and api services carry every variable their settings classes need (names derived
from the classes, so renaming a variable in code fails here until compose follows)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from api_service.settings import ApiSettings
from etl_service.settings import EtlSettings

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (requirements-dev.txt: pyyaml)")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

Aliases = Callable[[type[BaseSettings]], dict[str, tuple[str, ...]]]

_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str) -> str:
    """Resolve compose interpolation as on a machine without .env: defaults only."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if name and operator in (":-", "-"):
            return argument or ""
        raise AssertionError(
            f"docker-compose.yml needs ${{{name or match.group(4)}}} from the environment;"
            " give it a default so `docker compose up` works without a .env"
        )

    return _INTERPOLATION.sub(replace, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def service_env(compose: dict[str, Any], service: str) -> dict[str, str]:
    raw = compose["services"][service].get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    out = {}
    for key, value in raw.items():
        if isinstance(value, bool):
            raise AssertionError(f"{service}.{key}: quote booleans in compose ('true')")
        out[str(key)] = "" if value is None else interpolate(str(value))
    return out


def settings_from(
    cls: type[BaseSettings],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    aliases: dict[str, tuple[str, ...]],
) -> Any:
    """Instantiate the class from exactly this environment (no host variables, no .env)."""
    for names in aliases.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.lower(), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls(_env_file=None)  # type: ignore[call-arg]


def test_compose_parses_with_services(compose: dict[str, Any]) -> None:
    assert {"etl", "api"} <= set(compose["services"])


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    missing = []
    for name, service in compose["services"].items():
        check = service.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test or test in ("NONE", ["NONE"]):
            missing.append(name)
    assert not missing, f"services without a healthcheck: {missing}"


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = interpolate(str(service.get("image", "")))
        assert image, f"{name}: neither build nor image"
        if "@sha256:" in image:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: pin {image}"


def test_dependencies_exist_and_one_shots_do_not_restart(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        items = depends.items() if isinstance(depends, dict) else ((d, {}) for d in depends)
        for target, spec in items:
            assert target in services, f"{name} depends on unknown service {target}"
            if (spec or {}).get("condition") == "service_completed_successfully":
                assert str(services[target].get("restart", "no")) == "no", (
                    f"{target} is waited on to complete, so it must not restart"
                )


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name}: {source} does not exist"


def test_builds_use_the_repository_root(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert isinstance(build, dict), f"{name}: give build a context and a dockerfile"
        assert Path(build.get("context", ".")) == Path("."), f"{name}: context must be the root"
        assert (ROOT / build["dockerfile"]).is_file()


def test_etl_service_environment_satisfies_etl_settings(
    compose: dict[str, Any], aliases_of: Aliases, monkeypatch: pytest.MonkeyPatch
) -> None:
    aliases = aliases_of(EtlSettings)
    known = {name for names in aliases.values() for name in names}
    env = service_env(compose, "etl")
    unknown = sorted(set(env) - known)
    assert not unknown, f"etl sets variables EtlSettings does not read: {unknown}"

    def given(field: str) -> bool:
        return any(env.get(name) for name in aliases[field])

    mssql = ("mssql_host", "mssql_database", "mssql_username", "mssql_password")
    assert given("source_url") or all(given(f) for f in mssql), (
        f"etl needs {aliases['source_url'][0]} or all of " + ", ".join(aliases[f][0] for f in mssql)
    )
    assert given("database_url"), f"etl needs {aliases['database_url'][0]} (PostgreSQL state)"
    assert given("storage_url") or given("s3_bucket"), (
        f"etl needs {aliases['storage_url'][0]} or {aliases['s3_bucket'][0]}"
    )
    settings = settings_from(EtlSettings, env, monkeypatch, aliases)
    assert settings.resolved_source_url
    assert settings.resolved_database_url.startswith("postgresql")
    assert settings.resolved_storage_url.startswith("s3://")


def test_api_service_environment_satisfies_api_settings(
    compose: dict[str, Any],
    aliases_of: Aliases,
    gunicorn_names: set[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aliases = aliases_of(ApiSettings)
    known = {name for names in aliases.values() for name in names} | gunicorn_names
    env = service_env(compose, "api")
    unknown = sorted(set(env) - known)
    assert not unknown, f"api sets variables ApiSettings/Gunicorn do not read: {unknown}"

    def given(field: str) -> bool:
        return any(env.get(name) for name in aliases[field])

    assert given("auth0_api_audience"), f"api needs {aliases['auth0_api_audience'][0]}"
    assert given("auth0_domain") or (given("auth0_jwks_url") and given("auth0_issuer")), (
        f"api needs {aliases['auth0_domain'][0]}, or {aliases['auth0_jwks_url'][0]}"
        f" and {aliases['auth0_issuer'][0]}"
    )
    assert given("redis_url"), f"api needs {aliases['redis_url'][0]} (shared rate limits)"
    assert given("storage_url") or given("s3_bucket")
    settings_from(ApiSettings, env, monkeypatch, aliases)


def test_etl_and_api_share_one_store(
    compose: dict[str, Any], aliases_of: Aliases, monkeypatch: pytest.MonkeyPatch
) -> None:
    etl = settings_from(
        EtlSettings, service_env(compose, "etl"), monkeypatch, aliases_of(EtlSettings)
    )
    api = settings_from(
        ApiSettings, service_env(compose, "api"), monkeypatch, aliases_of(ApiSettings)
    )
    assert etl.resolved_storage_url == api.resolved_storage_url
    assert etl.s3_endpoint_url == api.s3_endpoint_url


def test_seeded_login_is_the_one_the_etl_uses(compose: dict[str, Any]) -> None:
    seed = service_env(compose, "mssql-seed")
    etl = service_env(compose, "etl")
    assert seed["ETL_LOGIN"] == etl["MSSQL_USERNAME"]
    assert seed["ETL_PASSWORD"] == etl["MSSQL_PASSWORD"]
    assert seed["DATABASE_NAME"] == etl["MSSQL_DATABASE"]
    assert seed["MSSQL_SA_PASSWORD"] == service_env(compose, "mssql")["MSSQL_SA_PASSWORD"]


def test_the_dev_issuers_default_token_carries_every_scope_the_api_checks() -> None:
    # The guide's compose recipe takes the default token; GET /status needs read:status.
    import importlib.util

    deps = (ROOT / "api-service" / "api_service" / "deps.py").read_text(encoding="utf-8")
    checked = set(re.findall(r'require_scope\("([\w:]+)"\)', deps))
    assert "read:status" in checked
    spec = importlib.util.spec_from_file_location(
        "dev_issuer", ROOT / "scripts" / "compose" / "dev_issuer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert checked <= set(module.DEFAULT_SCOPES.split())


def test_lake_mode_is_one_override_away(
    compose: dict[str, Any], aliases_of: Aliases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`PUBLISH_MODE=lake WITH_LAKE=true docker compose up --build`: both images
    take the build argument, and both services read one catalog in lake mode."""
    for service in ("etl", "api", "all-in-one"):
        args = compose["services"][service]["build"].get("args") or {}
        assert interpolate(str(args.get("WITH_LAKE"))) == "false", service
    seen = {}
    for service, cls in (("etl", EtlSettings), ("api", ApiSettings)):
        env = service_env(compose, service)
        assert env.get("PUBLISH_MODE") == "file", f"{service}: PUBLISH_MODE defaults to file"
        settings = settings_from(cls, {**env, "PUBLISH_MODE": "lake"}, monkeypatch, aliases_of(cls))
        assert settings.publish_mode == "lake"
        catalog = settings.lake_catalog_url
        seen[service] = catalog.get_secret_value() if catalog else None
    assert seen["api"] and seen["etl"] == seen["api"], seen
