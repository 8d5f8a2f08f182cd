"""State store: source schema changes and what each table's contract did.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schema_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("sync_runs.id", ondelete="SET NULL")),
        sa.Column("table_name", sa.String(255), nullable=False),
        sa.Column("detected_at", TZ, nullable=False),
        sa.Column("contract", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),  # evolved | refused | discarded
        # {"added": [...], "removed": [...], "retyped": {...}} (a manifest SchemaChange)
        sa.Column("change", sa.JSON, nullable=False),
    )
    op.create_index("ix_schema_changes_table", "schema_changes", ["table_name", "id"])


def downgrade() -> None:
    op.drop_table("schema_changes")
