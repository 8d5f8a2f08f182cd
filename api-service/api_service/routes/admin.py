"""Admin actions (scope `admin:etl`): commands handed to the ETL worker's queue.

`POST /admin/commands` queues a rollback, a dead-letter retry or discard, or a
table backfill and answers 202 with the pending command; `GET
/admin/commands/{id}` shows it as the worker runs it (pending -> running ->
done | failed, with its outcome or error); `GET /admin/commands` lists the
latest. Without the scope every one answers 403 `insufficient_scope`; without
ETL_STATE_DATABASE_URL, 501 `commands_not_configured`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from api_service.deps import AdminEtl, EtlCommandsDep
from api_service.errors import UnknownCommand
from api_service.http.responses import json_response

router = APIRouter(prefix="/admin", tags=["admin"])

_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RollbackArgs(_Strict):
    version: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")


class DeadLetterArgs(_Strict):
    id: int = Field(ge=1)


class BackfillArgs(_Strict):
    table: str = Field(pattern=_IDENTIFIER)


class Rollback(_Strict):
    kind: Literal["rollback"]
    args: RollbackArgs


class DeadLetter(_Strict):
    kind: Literal["dlq-retry", "dlq-discard"]
    args: DeadLetterArgs


class Backfill(_Strict):
    kind: Literal["backfill"]
    args: BackfillArgs


CommandRequest = Annotated[Rollback | DeadLetter | Backfill, Field(discriminator="kind")]


@router.post(
    "/commands",
    status_code=202,
    operation_id="submitEtlCommand",
    summary="Hand a command to the ETL worker",
)
async def submit_command(
    body: CommandRequest, principal: AdminEtl, commands: EtlCommandsDep
) -> Response:
    command = await run_in_threadpool(
        commands.submit, body.kind, body.args.model_dump(), f"api:{principal.sub}"
    )
    return json_response({"success": True, "command": command}, 202)


@router.get(
    "/commands", operation_id="listEtlCommands", summary="The latest commands, newest first"
)
async def list_commands(
    principal: AdminEtl,
    commands: EtlCommandsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    return json_response(
        {"success": True, "commands": await run_in_threadpool(commands.recent, limit)}
    )


@router.get(
    "/commands/{command_id}", operation_id="getEtlCommand", summary="One command and its outcome"
)
async def get_command(
    command_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    principal: AdminEtl,
    commands: EtlCommandsDep,
) -> Response:
    command = await run_in_threadpool(commands.get, command_id)
    if command is None:
        raise UnknownCommand(f"no command {command_id}")
    return json_response({"success": True, "command": command})
