"""Live data-version events: `GET /events` (Server-Sent Events) and
`POST /events/ticket`.

A stream sends `retry:`, then the version this worker serves (`event:
data_version`, `id:` the version), then each version it swaps to, and a
comment line every EVENTS_HEARTBEAT_SECONDS. A client that reconnects with
`Last-Event-ID` (header, or `last_event_id=` for a new EventSource) equal to
the version in service gets no repeat of it.

Authentication: `Authorization: Bearer` (fetch-based readers), or
`?ticket=` from `POST /events/ticket` for browsers' `EventSource`, which
cannot send headers. A ticket is signed, names the caller and expires after
EVENTS_TICKET_SECONDS; the token itself never goes into a URL, and the
request log never records query strings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from api_service.auth.principal import Principal
from api_service.auth.signing import BadSignature, Signer
from api_service.data.version_events import VersionEvents
from api_service.deps import EventsDep, ReadAnalytics, SettingsDep, SignerDep, get_principal
from api_service.errors import InsufficientScope, InvalidTicket
from api_service.http.responses import json_response

router = APIRouter(tags=["events"])

TICKET_KIND = "events-ticket"
RETRY_MS = 3000


class EventStream(StreamingResponse):
    """Gives the worker's stream slot back however the stream ends."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(version: str, created_at: str | None) -> bytes:
    data = orjson.dumps({"data_version": version, "data_created_at": created_at})
    return b"id: %s\nevent: data_version\ndata: %s\n\n" % (version.encode(), data)


async def _stream(
    events: VersionEvents, last_event_id: str | None, heartbeat: float
) -> AsyncIterator[bytes]:
    yield b"retry: %d\n\n" % RETRY_MS
    sent = last_event_id
    while not events.closed:
        changed = events.changed()
        version = events.version
        if version is not None and version != sent:
            snap = events.snapshots.current
            created = snap.manifest.created_at.isoformat() if snap is not None else None
            yield _event(version, created)
            sent = version
        try:
            await asyncio.wait_for(changed.wait(), heartbeat)
        except TimeoutError:
            yield b": heartbeat %d\n\n" % int(time.time())


async def _caller(request: Request, ticket: str | None, signer: Signer) -> Principal:
    if ticket is None:
        principal = await get_principal(request, None, request.headers.get("x-api-key"))
        if "read:analytics" not in principal.scopes:
            raise InsufficientScope("read:analytics")
        return principal
    try:
        claims = signer.verify(TICKET_KIND, ticket)
        expired = float(claims["exp"]) < time.time()
        principal = Principal(sub=str(claims["sub"]), app=claims.get("app"), auth_method="ticket")
    except (BadSignature, KeyError, TypeError, ValueError):
        raise InvalidTicket("the events ticket is not valid (POST /events/ticket)") from None
    if expired:
        raise InvalidTicket("the events ticket has expired; get a new one (POST /events/ticket)")
    request.state.principal = principal
    return principal


@router.post(
    "/events/ticket",
    summary="A short-lived ticket to open GET /events from a browser's EventSource",
)
async def events_ticket(
    principal: ReadAnalytics, signer: SignerDep, settings: SettingsDep
) -> Response:
    ttl = settings.events_ticket_seconds
    claims: dict[str, Any] = {"sub": principal.sub, "app": principal.app, "exp": time.time() + ttl}
    return json_response(
        {"success": True, "ticket": signer.sign(TICKET_KIND, claims), "expires_in": ttl}
    )


@router.get("/events", summary="Server-Sent Events: the data version, now and on every change")
async def events_stream(
    request: Request,
    events: EventsDep,
    signer: SignerDep,
    settings: SettingsDep,
    ticket: Annotated[
        str | None, Query(max_length=2048, description="From POST /events/ticket")
    ] = None,
    last_event_id_param: Annotated[
        str | None,
        Query(alias="last_event_id", max_length=128, description="Resume after this version"),
    ] = None,
    last_event_id: Annotated[str | None, Header(max_length=128)] = None,
) -> Response:
    caller = await _caller(request, ticket, signer)
    # Past EVENTS_MAX_CONNECTIONS_PER_USER (429) or EVENTS_MAX_CONNECTIONS (503):
    # a ticket opens any number of streams, the rate limit never sees them.
    events.acquire(caller.sub)
    body = _stream(events, last_event_id or last_event_id_param, settings.events_heartbeat_seconds)
    return EventStream(body, lambda: events.release(caller.sub))
