"""Fixtures with real services, shared by every test folder.

PostgreSQL and Redis are already running (TEST_DATABASE_URL, TEST_REDIS_URL);
SeaweedFS and the JWKS endpoint are started here on loopback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analytics_shared.object_store import LocalObjectStore, ObjectStore
from api_service.dev.issuer import DevIssuer
from testsupport.disk import SmallDisk, can_mount, small_disk
from testsupport.postgres import temporary_database
from testsupport.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedFS
from testsupport.snapshots import store_from_env

TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AUDIENCE = "https://analytics-api.test"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test (dropped afterwards)."""
    with temporary_database() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS) -> dict[str, str]:
    """Settings environment for a fresh bucket on the SeaweedFS server."""
    bucket = seaweedfs.create_bucket()
    return {
        "STORAGE_URL": f"s3://{bucket}/analytics",
        "S3_ENDPOINT_URL": seaweedfs.endpoint_url,
        "S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }


@pytest.fixture(scope="session")
def issuer() -> Iterator[DevIssuer]:
    with DevIssuer(audience=AUDIENCE) as dev:
        yield dev


@pytest.fixture
def auth_env(issuer: DevIssuer) -> dict[str, str]:
    return issuer.settings_env()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Callable[[str, int], SmallDisk]]:
    """Mounts small tmpfs filesystems to fill up (skips where mounting needs root)."""
    if not can_mount():
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    with contextlib.ExitStack() as stack:
        yield lambda name, size_mb: stack.enter_context(small_disk(tmp_path / name, size_mb))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """Each object-store implementation in turn (a folder, then SeaweedFS)."""
    if request.param == "local":
        return LocalObjectStore(tmp_path / "store")
    return store_from_env(request.getfixturevalue("s3_env"))


SEED_TABLES = "inventory,products,orders,transactions,customers"


@pytest.fixture
def platform_env(
    pg_url: str, s3_env: dict[str, str], auth_env: dict[str, str], data_dir: Path
) -> dict[str, str]:
    """Settings for both services: PostgreSQL source, SeaweedFS store, dev issuer."""
    return {
        **s3_env,
        **auth_env,
        "SOURCE_URL": pg_url,
        "TABLES_TO_SYNC": SEED_TABLES,
        "DATA_DIR": str(data_dir),
        "SNAPSHOT_POLL_SECONDS": "0.5",
        "ETL_METRICS_PORT": "0",
    }


# `make test` runs the suite in two phases: everything but these files in
# parallel (pytest-xdist), then these alone. They hold a memory cgroup at its
# limit, or measure latency or a browser's timing, and a busy machine makes
# them fail for reasons that are not theirs (docs/testing.md).
SERIAL_FILES = (
    "tests/test_memory_fit.py",
    "tests/test_etl_memory_fit.py",
    "tests/test_all_in_one.py",
    "tests/test_cgroup_helper.py",
    "tests/test_snapshot_hot_swap.py",
    "tests/browser/",
    "api-service/tests/test_amplification.py",
    "api-service/tests/test_security_holes.py",
    "api-service/tests/test_shared_query_slots.py",
)


# The longest scenarios of the parallel phase (30-140 s each) start first, so
# the short tests fill in around them instead of one running alone at the end.
LONG_FILES = (
    "tests/test_control_plane.py",
    "tests/test_runbook_recipes.py",
    "tests/test_lake_",
    "tests/test_snapshot_kill.py",
    "tests/test_snapshot_outage.py",
    "tests/test_load_progress.py",
    "tests/test_end_to_end.py",
    "tests/clients/",
    "api-service/tests/test_fuzz_openapi.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    paths = {item: Path(str(item.path)).relative_to(root).as_posix() for item in items}
    for item in items:
        if paths[item].startswith(SERIAL_FILES):
            item.add_marker(pytest.mark.serial)
    items.sort(key=lambda item: not paths[item].startswith(LONG_FILES))  # stable
