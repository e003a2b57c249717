"""The database's schema revision against this version's migrations, and the
migrations themselves (Alembic).

A start whose schema is already current never imports Alembic: which revisions this
version knows is read from the migration files' ``revision``/``down_revision`` lines
(the test compares that with Alembic's own reading), and the database's revision from
Alembic's version table. Alembic (with its reading of the migration scripts, about
0.09 s of CPU at every start) is imported only to migrate.
"""

from __future__ import annotations

import enum
import functools
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's own

# A migration file's own identifiers, as Alembic's template writes them.
_ASSIGNMENT = re.compile(r"""^(revision|down_revision)\s*(?::[^=]*)?=\s*(.+?)\s*$""", re.M)


class SchemaState(enum.Enum):
    EMPTY = "empty"  # a new database: any replica may create the schema
    BEHIND = "behind"  # an older schema this version knows: the leader migrates it
    CURRENT = "current"
    # A revision this version does not know: a newer version migrated the database.
    # Writing with old code could corrupt it, so this replica waits, not ready.
    NEWER = "newer"


class UnknownRevision(ValueError):
    """``migrate --to`` named a revision this version does not know."""


@functools.cache
def revisions() -> tuple[frozenset[str], frozenset[str]]:
    """Every revision this version knows, and its heads (those no other revises)."""
    known: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(_ASSIGNMENT.findall(path.read_text()))
        if "revision" not in found:
            continue  # __init__.py
        known.add(_literal(found["revision"]))
        down = found.get("down_revision", "None")
        if down != "None":
            revised.add(_literal(down))
    return frozenset(known), frozenset(known - revised)


def _literal(text: str) -> str:
    """A quoted revision id: ``"0005"`` -> ``0005``."""
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0]:
        raise ValueError(f"not a plain revision id in a migration file: {text}")
    return text[1:-1]


def schema_state(connection: Connection) -> SchemaState:
    # Read directly: a standby asks twice a second, and MigrationContext logs each time.
    current: set[str] = set()
    if sa.inspect(connection).has_table(VERSION_TABLE):
        rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))
        current = {str(row[0]) for row in rows}
    known, heads = revisions()
    if not current:
        return SchemaState.EMPTY
    if not current <= known:
        return SchemaState.NEWER
    return SchemaState.CURRENT if current == heads else SchemaState.BEHIND


def migrate_to(connection: Connection, target: str) -> None:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    known, _ = revisions()
    if target == "head":
        command.upgrade(config, "head")
        return
    if target not in known and target != "base":
        raise UnknownRevision(f"no revision {target!r}; known: {', '.join(sorted(known))}")
    current = current_revision(connection)
    script = ScriptDirectory(str(MIGRATIONS))
    below = {r.revision for r in script.walk_revisions("base", current)} if current else set()
    if target == "base" or (target in below and target != current):
        command.downgrade(config, target)  # each migration's downgrade(), newest first
    else:
        command.upgrade(config, target)


def current_revision(connection: Connection) -> str | None:
    if not sa.inspect(connection).has_table(VERSION_TABLE):
        return None
    return connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
