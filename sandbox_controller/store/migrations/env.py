"""Alembic environment. The store hands us a live connection; we never build one."""

from __future__ import annotations

from alembic import context

from sandbox_controller.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
