"""State store: run history, per-table state, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    # The walking skeleton created these two tables without migrations; what
    # they held (full-reload bookkeeping) is not worth keeping.
    inspector = sa.inspect(op.get_bind())
    for legacy in ("sync_runs", "table_state"):
        if inspector.has_table(legacy):
            op.drop_table(legacy)
    op.create_table(
        "sync_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False, server_default="sync"),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows", sa.JSON, nullable=False),
        sa.Column("published_version", sa.String(64)),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_sync_runs_started_at", "sync_runs", ["started_at"])
    op.create_table(
        "table_state",
        sa.Column("table_name", sa.String(255), primary_key=True),
        # The source's own text, at its precision (datetime2 has 100 ns ticks).
        sa.Column("watermark", sa.String(64)),
        sa.Column("last_synced_at", TZ),
        sa.Column("last_reconciled_at", TZ),
        sa.Column("last_full_load_at", TZ),
        sa.Column("row_count", sa.BigInteger),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("sync_runs.id", ondelete="SET NULL")),
        # NULL: the whole cycle failed (snapshot, publish), not one table.
        sa.Column("table_name", sa.String(255)),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # open | resolved | discarded
        sa.Column("first_failed_at", TZ, nullable=False),
        sa.Column("last_failed_at", TZ, nullable=False),
        sa.Column("closed_at", TZ),
    )
    op.create_index("ix_dead_letters_status", "dead_letters", ["status", "table_name"])


def downgrade() -> None:
    op.drop_table("dead_letters")
    op.drop_table("table_state")
    op.drop_table("sync_runs")
