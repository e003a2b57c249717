"""The Docker tests' skip decision (tests/dockerhost.py): on a machine that followed the
README but has no test images and no debootstrap, they skip with one line saying what
to install; in CI the same problem fails them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from .dockerhost import skip_or_fail, unbuildable


def test_missing_images_without_debootstrap_skip_locally_with_one_line(tmp_path: Path) -> None:
    missing = f"agent-sandbox/base:missing-{uuid.uuid4().hex[:8]}"
    problem = unbuildable(missing, tmp_path / "base-missing.tar", debootstrap=None)
    assert problem is not None and "\n" not in problem
    assert missing in problem and "apt-get install debootstrap" in problem
    with pytest.raises(pytest.skip.Exception, match="debootstrap is missing"):
        skip_or_fail(problem, {})
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail(problem, {"CI": "false"})


def test_the_same_problem_fails_in_ci(tmp_path: Path) -> None:
    problem = unbuildable("agent-sandbox/base:none", tmp_path / "none.tar", debootstrap=None)
    for ci in ("true", "1"):
        with pytest.raises(pytest.fail.Exception, match="debootstrap is missing"):
            skip_or_fail(problem, {"CI": ci})


def test_images_can_be_built_from_a_cached_root_filesystem_or_with_debootstrap(
    tmp_path: Path,
) -> None:
    tarball = tmp_path / "base-cached.tar"
    assert unbuildable("agent-sandbox/base:none", tarball, "/usr/sbin/debootstrap") is None
    tarball.write_bytes(b"")
    assert unbuildable("agent-sandbox/base:none", tarball, debootstrap=None) is None
    skip_or_fail(None, {"CI": "true"})  # no problem: neither skips nor fails
