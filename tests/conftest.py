"""Fixtures of the end-to-end lake-mode tests: a lake-mode ETL in-process and
API hosts' replicators, each with its own cache directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from analytics_shared.lake import LakeConfig
from api_service.data.cache import SnapshotCache
from api_service.data.lake_replica import LakeReplicator
from api_service.settings import ApiSettings
from etl_service.demo_source import create_demo_source
from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.lake import LAKE_TABLES, lake_platform_env
from testsupport.snapshots import run_etl


@pytest.fixture
def lake_env(pg_url: str, s3_env: dict[str, str], data_dir: Path) -> dict[str, str]:
    return {
        **s3_env,
        "SOURCE_URL": pg_url,
        "DATABASE_URL": pg_url,  # the state database is the lake's catalog too
        "DATA_DIR": str(data_dir),
        "PUBLISH_MODE": "lake",
        "TABLES_TO_SYNC": ",".join(LAKE_TABLES),
        "RETRY_ATTEMPTS": "3",
        "RETRY_BASE_SECONDS": "0.01",
        "RETRY_MAX_SECONDS": "0.05",
    }


@pytest.fixture
def lake_etl(lake_env: dict[str, str]) -> Iterator[Callable[..., SyncEngine]]:
    engines: list[SyncEngine] = []

    def build(**overrides: str) -> SyncEngine:
        engine = SyncEngine.from_settings(EtlSettings(**{**lake_env, **overrides}), progress=False)
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def make_replicator(
    lake_env: dict[str, str], auth_env: dict[str, str], pg_url: str, tmp_path: Path
) -> Callable[[str], LakeReplicator]:
    """An API host's replicator, named for its own cache directory."""

    def build(host: str) -> LakeReplicator:
        settings = ApiSettings(
            **{
                **lake_env,
                **auth_env,
                "DATA_DIR": str(tmp_path / host),
                "LAKE_CATALOG_URL": pg_url,
            }
        )
        store = settings.open_store()
        config = LakeConfig.from_settings(settings, pg_url)
        return LakeReplicator(store, config, SnapshotCache(store, settings.cache_dir))

    return build


@pytest.fixture
def lake_platform(
    platform_env: dict[str, str], pg_url: str
) -> Iterator[tuple[dict[str, str], sa.Engine]]:
    """Settings for both services in lake mode and the demo source, after a first
    `analytics-etl sync` published the first lake version."""
    env = lake_platform_env(platform_env, pg_url)
    source = create_demo_source(pg_url)
    try:
        first = run_etl(["sync"], env)
        assert first.returncode == 0, first.stderr[-3000:]
        yield env, source
    finally:
        source.dispose()
