"""The commands queue (`etl_commands` in the state database).

A data-changing CLI command becomes a row (pending); the running worker claims
the oldest pending row at a cycle boundary (running), runs it and records the
outcome (done | failed). What must always hold: a command runs at most once
(the claim is one conditional UPDATE), and none is lost: a worker killed while
one is pending leaves it pending for the next worker; one killed while a
command runs leaves it running, and the next worker marks it failed with the
reason (it does not run it again: part of it may have happened).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from analytics_shared.etl_commands import CommandStatus, etl_commands
from etl_service.state import close_running

__all__ = ["Command", "CommandQueue", "CommandStatus", "etl_commands"]


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True)
class Command:
    id: int
    kind: str
    args: dict[str, Any]
    status: CommandStatus
    submitted_at: datetime
    submitted_by: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    progress: str | None = None
    outcome: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Command:
        return cls(**{k: _aware(v) for k, v in row._mapping.items()})

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class CommandQueue:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def submit(self, kind: str, args: dict[str, Any]) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(
                etl_commands.insert().values(
                    kind=kind,
                    args=args,
                    status="pending",
                    submitted_at=datetime.now(UTC),
                    submitted_by=f"{socket.gethostname()}:{os.getpid()}",
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def get(self, command_id: int) -> Command | None:
        with self.engine.connect() as conn:
            row = conn.execute(etl_commands.select().where(etl_commands.c.id == command_id)).first()
            return Command.from_row(row) if row else None

    def recent(self, limit: int = 20) -> list[Command]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                etl_commands.select().order_by(etl_commands.c.id.desc()).limit(limit)
            )
            return [Command.from_row(r) for r in rows]

    def pending_count(self) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(etl_commands.c.status == "pending")
            ).scalar()
            return int(count or 0)

    def claim_next(self, worker: str) -> Command | None:
        """The oldest pending command, now running under `worker` (None: queue empty)."""
        while True:
            with self.engine.connect() as conn:
                first = conn.execute(
                    sa.select(etl_commands.c.id)
                    .where(etl_commands.c.status == "pending")
                    .order_by(etl_commands.c.id)
                    .limit(1)
                ).scalar()
            if first is None:
                return None
            if self.claim(first, worker):
                return self.get(first)

    def claim(self, command_id: int, worker: str) -> bool:
        """pending -> running, at most once (False: someone else claimed it)."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                etl_commands.update()
                .where(etl_commands.c.id == command_id, etl_commands.c.status == "pending")
                .values(status="running", started_at=datetime.now(UTC), worker=worker)
            )
            return bool(claimed.rowcount)

    def set_progress(self, command_id: int, text: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                etl_commands.update().where(etl_commands.c.id == command_id).values(progress=text)
            )

    def finish(
        self,
        command_id: int,
        status: Literal["done", "failed"],
        outcome: dict[str, Any] | None,
        error: str | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                etl_commands.update()
                .where(etl_commands.c.id == command_id)
                .values(status=status, finished_at=datetime.now(UTC), outcome=outcome, error=error)
            )

    def fail_interrupted(self) -> list[int]:
        """Commands a dead worker left running: failed, with the reason (never rerun)."""
        return close_running(
            self.engine,
            etl_commands,
            status="failed",
            error="interrupted: the worker stopped while running it; check"
            " `analytics-etl status` and submit it again if still needed",
        )
