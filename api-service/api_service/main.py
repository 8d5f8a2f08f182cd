"""The FastAPI application: `create_app()` wires settings, auth, snapshots, routes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from analytics_shared.logging_config import configure_logging, get_logger
from analytics_shared.settings import load_settings
from analytics_shared.whitelist import load_whitelist
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from api_service import __version__
from api_service.auth import JwksCache, TokenValidator
from api_service.errors import install_error_handlers
from api_service.routes import health, query, schema
from api_service.settings import ApiSettings
from api_service.snapshots import SnapshotManager

__all__ = ["create_app"]

log = get_logger(__name__)


async def _poll_snapshots(manager: SnapshotManager, interval: float) -> None:
    while True:
        await run_in_threadpool(manager.refresh)
        await asyncio.sleep(interval)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or load_settings(ApiSettings)
    whitelist = load_whitelist(settings.query_whitelist_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jwks = JwksCache(settings.jwks_url, ttl=settings.jwks_cache_seconds)
        app.state.validator = TokenValidator(
            jwks,
            issuer=settings.issuer,
            audience=settings.auth0_api_audience or "",
            algorithms=settings.auth0_algorithms,
            leeway=settings.jwt_leeway_seconds,
        )
        manager = app.state.snapshots
        poller = asyncio.create_task(_poll_snapshots(manager, settings.snapshot_poll_seconds))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            manager.close()
            await jwks.aclose()

    app = FastAPI(
        title="Analytics API",
        version=__version__,
        description="Read-only SQL over the latest published analytics snapshot.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.whitelist = whitelist
    app.state.snapshots = SnapshotManager(
        settings.open_store(),
        settings.cache_dir,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
    )
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials="*" not in settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "X-Data-Version"],
        )

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        incoming = request.headers.get("x-request-id", "")
        request_id = (
            incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        )
        request.state.request_id = request_id
        response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        return response

    app.include_router(health.router)
    app.include_router(schema.router)
    app.include_router(query.router)
    return app


def app_factory() -> FastAPI:
    """Entry point for Gunicorn/Uvicorn (`api_service.main:app_factory()`)."""
    settings = load_settings(ApiSettings)
    configure_logging(settings.log_level, service="api-service", json=settings.log_json)
    return create_app(settings)
