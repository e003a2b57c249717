"""Sessions and pods name their template; sessions carry their org, plan and resources;
a thread is unique per org and user, not across the whole deployment.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_LIVE = "state <> 'ended'"


def upgrade() -> None:
    # Rows of an older controller read as the default template, no org, no plan and the
    # template's own resources. org_id is '' rather than NULL for "no org": a unique index
    # treats NULLs as distinct, and one thread per (org, user) must hold without an org.
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("template", sa.String(63), nullable=True))
        batch.add_column(sa.Column("org_id", sa.String(253), nullable=False, server_default=""))
        batch.add_column(sa.Column("plan", sa.String(63), nullable=True))
        batch.add_column(sa.Column("resources", sa.Text, nullable=True))
    with op.batch_alter_table("pods") as batch:
        batch.add_column(sa.Column("template", sa.String(63), nullable=True))
        batch.add_column(sa.Column("resources", sa.Text, nullable=True))
    op.drop_index("ux_sessions_live_thread", table_name="sessions")
    op.create_index(
        "ux_sessions_live_thread",
        "sessions",
        ["org_id", "user_id", "thread_id"],
        unique=True,
        postgresql_where=sa.text(_LIVE),
        sqlite_where=sa.text(_LIVE),
    )
    op.create_index("ix_sessions_org_id", "sessions", ["org_id"])


def downgrade() -> None:
    # Refuses (unique violation) when two orgs hold a live session for one thread id:
    # the older schema cannot say which is which.
    op.drop_index("ix_sessions_org_id", table_name="sessions")
    op.drop_index("ux_sessions_live_thread", table_name="sessions")
    op.create_index(
        "ux_sessions_live_thread",
        "sessions",
        ["thread_id"],
        unique=True,
        postgresql_where=sa.text(_LIVE),
        sqlite_where=sa.text(_LIVE),
    )
    with op.batch_alter_table("pods") as batch:
        batch.drop_column("resources")
        batch.drop_column("template")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("resources")
        batch.drop_column("plan")
        batch.drop_column("org_id")
        batch.drop_column("template")
