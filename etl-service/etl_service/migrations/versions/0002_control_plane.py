"""Control plane: the commands queue and the running worker's registration.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "etl_commands",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        # sync | backfill | reconcile | dlq-retry | dlq-discard | rollback
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("args", sa.JSON, nullable=False),
        # pending -> running -> done | failed
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("submitted_at", TZ, nullable=False),
        sa.Column("submitted_by", sa.String(255), nullable=False),
        sa.Column("started_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("worker", sa.String(255)),  # host:pid of the worker that ran it
        sa.Column("progress", sa.Text),
        sa.Column("outcome", sa.JSON),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_etl_commands_status", "etl_commands", ["status", "id"])
    op.create_table(
        "etl_worker",
        # One row per holder role ("worker", or "command" for a CLI command run directly).
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("command", sa.String(255), nullable=False),
        sa.Column("since", TZ, nullable=False),
        sa.Column("heartbeat_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("etl_worker")
    op.drop_index("ix_etl_commands_status", "etl_commands")
    op.drop_table("etl_commands")
