"""Table definitions, shared by the store and the migrations' autogenerate check.

Timestamps are Unix seconds as doubles: the same on both databases, and what the
scheduler computes with.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(253), nullable=False),
    sa.Column("thread_id", sa.String(253), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("end_reason", sa.String(32), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_active_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=True),
    sa.Column("pod_name", sa.String(253), nullable=True),
    sa.Column("reclaimed_session_id", sa.String(64), nullable=True),
    # JSON: the caller's metadata (string map), echoed in the session.
    sa.Column("session_metadata", sa.Text, nullable=True),
    sa.Column("activity_source", sa.String(16), nullable=True),
    sa.Column("activity_detail", sa.String(256), nullable=True),
    # JSON: model.EndDetail, why the session ended when it did.
    sa.Column("end_detail", sa.Text, nullable=True),
    # The template the session runs (NULL: the default one), its org ('' for none), its
    # plan (NULL: the deployment's defaults), and JSON resources asked for (NULL: the
    # template's own).
    sa.Column("template", sa.String(63), nullable=True),
    sa.Column("org_id", sa.String(253), nullable=False, server_default=""),
    sa.Column("plan", sa.String(63), nullable=True),
    sa.Column("resources", sa.Text, nullable=True),
    # JSON list of host patterns granted beyond the deployment's egress list (NULL: none).
    sa.Column("egress_allow", sa.Text, nullable=True),
    # The suspended session's archive: its key in the snapshot store, size, when it was
    # taken and when it expires (all NULL without one).
    sa.Column("snapshot_key", sa.String(512), nullable=True),
    sa.Column("snapshot_bytes", sa.BigInteger, nullable=True),
    sa.Column("snapshot_taken_at", sa.Float, nullable=True),
    sa.Column("snapshot_expires_at", sa.Float, nullable=True),
    sa.Index("ix_sessions_user_id", "user_id"),
    sa.Index("ix_sessions_snapshot_expires_at", "snapshot_expires_at"),
    sa.Index("ix_sessions_org_id", "org_id"),
    sa.Index("ix_sessions_state_ended_at", "state", "ended_at"),
    # The database, too, refuses two live sessions for one thread of one org's user.
    sa.Index(
        "ux_sessions_live_thread",
        "org_id",
        "user_id",
        "thread_id",
        unique=True,
        postgresql_where=sa.text("state <> 'ended'"),
        sqlite_where=sa.text("state <> 'ended'"),
    ),
)

pods = sa.Table(
    "pods",
    metadata,
    sa.Column("name", sa.String(253), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("session_id", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("ready_at", sa.Float, nullable=True),
    sa.Column("template_hash", sa.String(64), nullable=False),
    sa.Column("address", sa.String(64), nullable=True),
    # The template the pod was made from (NULL: the default one) and JSON resources when
    # they differ from the template's.
    sa.Column("template", sa.String(63), nullable=True),
    sa.Column("resources", sa.Text, nullable=True),
)

# A session's egress secrets: the value sealed (AES-GCM under a key derived from the
# token secret), never in clear; rows go with the session's end.
session_secrets = sa.Table(
    "session_secrets",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("sealed_value", sa.LargeBinary, nullable=False),
    sa.Column("placeholder", sa.String(128), nullable=False),
    # JSON list of host patterns the value is sent to.
    sa.Column("hosts", sa.Text, nullable=False),
    sa.Column("header", sa.String(128), nullable=False),
    sa.Column("value_format", sa.String(256), nullable=False),
)

# What the egress proxy refused a session, newest last; the api answers the last 100.
egress_denials = sa.Table(
    "egress_denials",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("host", sa.String(253), nullable=False),
    sa.Column("port", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Index("ix_egress_denials_session_id", "session_id", "id"),
)

leader_lease = sa.Table(
    "leader_lease",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
