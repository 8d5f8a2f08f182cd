"""The FastAPI application: `create_app()` wires settings, auth, snapshots, routes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from analytics_shared.logging_config import configure_logging, get_logger
from analytics_shared.memory_limit import detect_memory_limit, format_size
from analytics_shared.settings import load_settings
from analytics_shared.whitelist import load_whitelist
from api_service import __version__
from api_service.access.rules import check_mask_secret
from api_service.auth.rate_limit import build_rate_limiter, warn_if_per_process
from api_service.auth.signing import Signer, signing_key
from api_service.auth.tokens import JwksCache, TokenValidator
from api_service.console import mount_console
from api_service.data.snapshots import SnapshotManager
from api_service.data.status_feed import EtlStatusFeed
from api_service.data.version_events import VersionEvents
from api_service.http.cors import install_cors
from api_service.http.error_handlers import install_error_handlers
from api_service.http.openapi import install_openapi
from api_service.http.request_log import RequestContextMiddleware
from api_service.ops.all_in_one import EmbeddedEtl, etl_share
from api_service.ops.etl_commands import EtlCommands
from api_service.ops.malloc_tuning import retain_freed_memory
from api_service.ops.memory_budget import MemoryBudget, apply_budget, replicator_reserve
from api_service.ops.metrics import RequestMetricsMiddleware
from api_service.query.named_queries import check_whitelist
from api_service.query.service import QueryService
from api_service.routes import admin, events, health, metrics, queries, query, schema, status
from api_service.settings import ApiSettings

__all__ = ["create_app"]

log = get_logger(__name__)


async def _poll_snapshots(manager: SnapshotManager, interval: float) -> None:
    """Refresh every interval (start-up did the first one); never dies."""
    while True:
        await asyncio.sleep(manager.next_poll_delay(interval))
        try:
            await run_in_threadpool(manager.refresh)
        except Exception:  # refresh() reports its own failures; this is a last guard
            log.exception("snapshot_poll_failed")


def memory_budget(settings: ApiSettings) -> tuple[ApiSettings, MemoryBudget]:
    """This worker's share of the container (ops/memory_budget.py): the limit
    the kernel enforces, split among WEB_CONCURRENCY workers (1 in-process)."""
    limit = detect_memory_limit(settings.memory_limit)
    workers = int(os.environ.get("WEB_CONCURRENCY") or 1)
    reserve = (etl_share(limit) if settings.all_in_one else 0) + replicator_reserve(
        settings.publish_mode
    )
    return apply_budget(settings, limit, workers, reserve)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings, budget = memory_budget(settings or load_settings(ApiSettings))
    whitelist = check_whitelist(load_whitelist(settings.query_whitelist_path))
    check_mask_secret(whitelist, settings.column_mask_secret)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jwks = JwksCache(
            settings.jwks_url,
            ttl=settings.jwks_cache_seconds,
            cooldown=settings.jwks_refetch_cooldown_seconds,
            max_stale=settings.jwks_max_stale_seconds,
        )
        app.state.rate_limiter = build_rate_limiter(settings)
        warn_if_per_process(app.state.rate_limiter)
        app.state.validator = TokenValidator(
            jwks,
            issuer=settings.issuer,
            audience=settings.auth0_api_audience or "",
            algorithms=settings.auth0_algorithms,
            leeway=settings.jwt_leeway_seconds,
        )
        await jwks.ensure_fetched()  # /health is not ready until keys were fetched once
        embedded = EmbeddedEtl(budget.reserve) if settings.all_in_one else None
        if embedded is not None:
            await run_in_threadpool(embedded.start)
        manager = app.state.snapshots
        # Uvicorn accepts connections only once start-up is done, so loading here
        # keeps Gunicorn from handing requests to a worker that has no data yet
        # while its siblings do. refresh() never raises; on failure the poller retries.
        await run_in_threadpool(manager.refresh)
        poller = asyncio.create_task(_poll_snapshots(manager, settings.snapshot_poll_seconds))
        app.state.events.start()
        try:
            yield
        finally:
            await app.state.events.close()
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if embedded is not None:
                await run_in_threadpool(embedded.stop)
            await app.state.query_service.aclose()
            app.state.query_service.close()
            if app.state.etl_commands is not None:
                app.state.etl_commands.close()
            manager.close()
            await jwks.aclose()
            await app.state.rate_limiter.aclose()

    app = FastAPI(
        title="Analytics API",
        version=__version__,
        description="Read-only SQL over the latest published analytics snapshot.",
        lifespan=lifespan,
        docs_url=None,  # served offline by install_openapi
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.whitelist = whitelist
    snapshots = SnapshotManager(
        settings.open_store(),
        settings.cache_dir,
        # All-in-one publishes often: while a swap's old version still answers its
        # last queries, two versions are open, so each gets half the budget.
        memory_limit=(
            format_size(budget.duckdb // 2) if settings.all_in_one else settings.duckdb_memory_limit
        ),
        threads=settings.duckdb_threads,
        max_spill_size=settings.duckdb_max_temp_directory_size,
    )
    app.state.snapshots = snapshots
    app.state.etl_commands = (
        EtlCommands(settings.etl_state_database_url) if settings.etl_state_database_url else None
    )
    signer = Signer(signing_key(settings.api_signing_secret, settings.cache_dir))
    app.state.signer = signer
    app.state.query_service = QueryService.from_settings(settings, snapshots, signer, budget)
    app.state.events = VersionEvents(
        snapshots, settings.events_max_connections, settings.events_max_connections_per_user
    )
    app.state.status_feed = EtlStatusFeed(snapshots.store)  # GET /status
    install_error_handlers(app)
    install_cors(app, settings.cors_origins)

    # Outermost: request id, body size limit, rate-limit headers, the request log.
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetricsMiddleware)  # outermost: times everything

    app.include_router(health.router)
    app.include_router(schema.router)
    app.include_router(query.router)
    app.include_router(queries.router)
    app.include_router(admin.router)
    app.include_router(events.router)
    app.include_router(status.router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)
    if settings.console_enabled:
        mount_console(app, settings, admin_commands=app.state.etl_commands is not None)
    install_openapi(app, whitelist)
    return app


def app_factory() -> FastAPI:
    """Entry point for Gunicorn/Uvicorn (`api_service.main:app_factory()`)."""
    settings = load_settings(ApiSettings)
    configure_logging(settings.log_level, service="api-service", json=settings.log_json)
    # Large response bodies reuse heap memory (malloc_tuning.py), as much as the budget allows.
    retain_freed_memory(memory_budget(settings)[1].malloc_retain_per_arena)
    return create_app(settings)
