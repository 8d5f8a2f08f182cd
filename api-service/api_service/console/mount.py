"""Mounting the console: `/console/config.json`, then the built assets.

When the assets were not built (`make console` needs Node), `/console/` says
so in one static page instead of answering 404.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_service import __version__
from api_service.settings import ApiSettings

__all__ = ["STATIC_DIR", "console_config", "content_security_policy", "mount_console"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Analytics console</title></head>
<body><main><h1>Analytics console</h1>
<p>The console was not built on this server: run <code>make console</code>
(needs Node.js 20 and npm), then restart the API.</p>
<p>The API itself works: see <a href="/docs">/docs</a> and <a href="/health">/health</a>.</p>
</main></body></html>
"""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: ApiSettings) -> str:
    """Scripts, styles and data from this origin only; the one exception is the
    token request to the authorization server (a cross-origin POST)."""
    login = settings.console_login_base
    connect = "'self'" + (f" {_origin(login)}" if login else "")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def console_config(
    settings: ApiSettings, admin_commands: bool, paths: set[str]
) -> dict[str, object]:
    """What the console needs to know before anyone signs in (nothing secret).

    `endpoints` says which optional endpoints this server has, so the console
    neither probes for them nor logs a 404 where one is missing."""
    login = settings.console_login_base
    auth = (
        {
            "authorize_url": f"{login}/authorize",
            "token_url": f"{login}/oauth/token",
            "client_id": settings.console_auth0_client_id,
            "audience": settings.auth0_api_audience,
            "scope": settings.console_scopes,
        }
        if login
        else None
    )
    return {
        "api_version": __version__,
        "auth": auth,
        "freshness_target_seconds": settings.console_freshness_target_seconds,
        "poll_seconds": settings.console_poll_seconds,
        "admin_commands": admin_commands,
        "endpoints": {"status": "/status" in paths, "events": "/events" in paths},
    }


class _WithHeaders:
    """Adds fixed headers to every response of the wrapped ASGI app."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount_console(app: FastAPI, settings: ApiSettings, *, admin_commands: bool) -> None:
    headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    router = APIRouter(include_in_schema=False)

    @router.get("/console")
    async def console_root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308, headers=headers)

    @router.get("/console/config.json")
    async def console_config_json() -> JSONResponse:
        # The OpenAPI document: the routes as the app publishes them, however
        # FastAPI holds included routers (built once, then cached by the app).
        paths = set(app.openapi().get("paths", {}))
        return JSONResponse(console_config(settings, admin_commands, paths), headers=headers)

    app.include_router(router)
    if (STATIC_DIR / "index.html").is_file():
        app.mount("/console", _WithHeaders(StaticFiles(directory=STATIC_DIR, html=True), headers))
    else:

        @app.get("/console/{path:path}", include_in_schema=False)
        async def console_not_built(path: str) -> HTMLResponse:
            return HTMLResponse(NOT_BUILT, headers=headers)
