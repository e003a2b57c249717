"""Suspend and resume: a session's snapshot archive (where it is, how big, until when).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # All NULL while the session has no archive.
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("snapshot_key", sa.String(512), nullable=True))
        batch.add_column(sa.Column("snapshot_bytes", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("snapshot_taken_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("snapshot_expires_at", sa.Float, nullable=True))
    op.create_index("ix_sessions_snapshot_expires_at", "sessions", ["snapshot_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_snapshot_expires_at", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("snapshot_expires_at")
        batch.drop_column("snapshot_taken_at")
        batch.drop_column("snapshot_bytes")
        batch.drop_column("snapshot_key")
