"""Sessions keep the caller's metadata, their last activity's source, and why they ended.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable columns only: adding them is instant on both databases, and rows of an
    # older controller read as "no metadata, source unknown, no detail".
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("session_metadata", sa.Text, nullable=True))
        batch.add_column(sa.Column("activity_source", sa.String(16), nullable=True))
        batch.add_column(sa.Column("activity_detail", sa.String(256), nullable=True))
        batch.add_column(sa.Column("end_detail", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("end_detail")
        batch.drop_column("activity_detail")
        batch.drop_column("activity_source")
        batch.drop_column("session_metadata")
