"""Egress: what a session may reach beyond the deployment's list, its secrets (sealed),
and its recent denials.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: nothing granted beyond the deployment's list.
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("egress_allow", sa.Text, nullable=True))
    op.create_table(
        "session_secrets",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("sealed_value", sa.LargeBinary, nullable=False),
        sa.Column("placeholder", sa.String(128), nullable=False),
        sa.Column("hosts", sa.Text, nullable=False),
        sa.Column("header", sa.String(128), nullable=False),
        sa.Column("value_format", sa.String(256), nullable=False),
    )
    op.create_table(
        "egress_denials",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("host", sa.String(253), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
    )
    op.create_index("ix_egress_denials_session_id", "egress_denials", ["session_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_egress_denials_session_id", table_name="egress_denials")
    op.drop_table("egress_denials")
    op.drop_table("session_secrets")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("egress_allow")
