"""Fixtures of the end-to-end lake-mode tests: a lake-mode ETL in-process and
API hosts' replicators, each with its own cache directory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analytics_shared.lake import LakeConfig
from api_service.data.cache import SnapshotCache
from api_service.data.lake_replica import LakeReplicator
from api_service.settings import ApiSettings
from etl_service.settings import EtlSettings
from etl_service.sync import SyncEngine
from testsupport.lake import LAKE_TABLES


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
