"""infrastructure/railway: one config per service, built from its Dockerfile at the
repository root, with health checks and restart policies; the variable list names
the variables the settings require."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from api_service.routes.health import router as health_router
from api_service.settings import ApiSettings
from etl_service.settings import EtlSettings

ROOT = Path(__file__).resolve().parents[2]
RAILWAY = ROOT / "infrastructure" / "railway"

Aliases = Callable[[type[BaseSettings]], dict[str, tuple[str, ...]]]


def config(service: str) -> dict[str, Any]:
    return tomllib.loads((RAILWAY / service / "railway.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("service", ["etl-service", "api-service"])
def test_builds_the_services_dockerfile(service: str) -> None:
    build = config(service)["build"]
    assert build["builder"] == "DOCKERFILE"
    assert build["dockerfilePath"] == f"{service}/Dockerfile"
    assert (ROOT / build["dockerfilePath"]).is_file()


@pytest.mark.parametrize("service", ["etl-service", "api-service"])
def test_restart_policy(service: str) -> None:
    deploy = config(service)["deploy"]
    assert deploy["restartPolicyType"] in ("ON_FAILURE", "ALWAYS")
    for key in (
        "healthcheckTimeout",
        "restartPolicyMaxRetries",
        "overlapSeconds",
        "drainingSeconds",
    ):
        if key in deploy:
            assert isinstance(deploy[key], int), f"{key} must be a number"


def test_api_healthcheck_is_the_health_route() -> None:
    deploy = config("api-service")["deploy"]
    paths = {getattr(route, "path", None) for route in health_router.routes}
    assert deploy["healthcheckPath"] in paths


def test_exactly_one_etl_scheduler() -> None:
    deploy = config("etl-service")["deploy"]
    assert deploy["numReplicas"] == 1
    assert deploy.get("overlapSeconds", 0) == 0


def test_variable_list_names_the_required_variables(aliases_of: Aliases) -> None:
    text = (RAILWAY / "variables.md").read_text(encoding="utf-8")
    etl, api = aliases_of(EtlSettings), aliases_of(ApiSettings)
    required = [
        etl["mssql_host"],
        etl["mssql_database"],
        etl["mssql_username"],
        etl["mssql_password"],
        etl["database_url"],
        etl["storage_url"],
        etl["source_url"],
        api["auth0_domain"],
        api["auth0_api_audience"],
        api["redis_url"],
        api["storage_url"],
    ]
    missing = [names[0] for names in required if f"`{names[0]}`" not in text]
    assert not missing, f"infrastructure/railway/variables.md lacks {missing}"


def test_all_in_one_runs_api_and_etl_as_one_single_replica_service() -> None:
    all_in_one = config("all-in-one")
    assert all_in_one["build"]["dockerfilePath"] == "api-service/Dockerfile"
    dockerfile = (ROOT / "api-service" / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG WITH_ETL" in dockerfile and "./etl-service" in dockerfile
    deploy = all_in_one["deploy"]
    assert deploy["startCommand"] == "analytics-api serve --with-etl"
    assert deploy["numReplicas"] == 1 and deploy.get("overlapSeconds", 0) == 0
    paths = {getattr(route, "path", None) for route in health_router.routes}
    assert deploy["healthcheckPath"] in paths
    assert "WITH_ETL" in (RAILWAY / "variables.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("service", "command"),
    [("etl-service", "analytics-etl check-config"), ("api-service", "analytics-api check-config")],
)
def test_a_bad_setting_fails_the_deploy_before_the_running_service_stops(
    service: str, command: str
) -> None:
    # The ETL runs with overlapSeconds 0: without the check a bad variable stops
    # the good scheduler, and the new one crash-loops.
    assert config(service)["deploy"].get("preDeployCommand") == [command]
