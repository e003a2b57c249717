"""store/schema.py: the revisions this version knows, read without Alembic."""

from __future__ import annotations

import subprocess
import sys

from alembic.script import ScriptDirectory

from sandbox_controller.store.schema import MIGRATIONS, revisions


def test_the_revisions_read_from_the_files_are_alembic_s() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    known, heads = revisions()
    assert known == {r.revision for r in script.walk_revisions()}
    assert heads == set(script.get_heads())


def test_a_start_with_a_current_schema_imports_no_alembic() -> None:
    # The store and its schema check, as the controller's start uses them.
    code = (
        "import sys, sqlalchemy as sa\n"
        "from sandbox_controller.store import Store\n"
        "from sandbox_controller.store.schema import revisions\n"
        "revisions()\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
