"""The `etl_commands` table: the ETL worker's command queue in its state database.

Defined once, here, because two services use it: the ETL owns the table (its
migrations create it, its worker claims and runs the rows) and the API hands
commands to it (`POST /admin/commands` inserts pending rows when
ETL_STATE_DATABASE_URL is set). What must always hold: this definition and
the ETL's migration 0002 describe the same columns.
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa

__all__ = ["KINDS", "CommandStatus", "etl_commands"]

CommandStatus = Literal["pending", "running", "done", "failed"]

# What the worker knows how to run (etl_service/control/execute.py).
KINDS = ("sync", "backfill", "reconcile", "dlq-retry", "dlq-discard", "rollback")

_TZ = sa.DateTime(timezone=True)

etl_commands = sa.Table(
    "etl_commands",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("args", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("submitted_at", _TZ, nullable=False),
    sa.Column("submitted_by", sa.String(255), nullable=False),
    sa.Column("started_at", _TZ),
    sa.Column("finished_at", _TZ),
    sa.Column("worker", sa.String(255)),
    sa.Column("progress", sa.Text),
    sa.Column("outcome", sa.JSON),
    sa.Column("error", sa.Text),
)
