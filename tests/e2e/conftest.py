"""Everything under tests/e2e is marked ``e2e`` (whole processes, kubesim clusters,
seconds per test), so ``-m "not e2e and not deploy"`` leaves the fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The hook sees the whole session's items; mark only this folder's.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)
