"""The image Dockerfile, read as docker would (no engine here to build it)."""

from __future__ import annotations

import json
import re

from tests.deploy.deploytools import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def test_multi_stage_wheel_build_on_python_311_slim() -> None:
    steps = instructions()
    froms = [args for k, args in steps if k == "FROM"]
    assert len(froms) == 2
    assert froms[0].startswith("python:3.11-slim") and froms[0].endswith(" AS build")
    assert froms[1] == "python:3.11-slim"
    assert any(k == "RUN" and "pip wheel" in args for k, args in steps)
    runtime_runs = [args for k, args in final_stage() if k == "RUN"]
    # The runtime installs only the wheels built before: no compiler, no index.
    assert any("pip install" in a and "--no-index" in a for a in runtime_runs)


def test_runs_as_numeric_non_root_user() -> None:
    users = [args for k, args in final_stage() if k == "USER"]
    assert users, "the runtime stage must set USER"
    uid = users[-1].split(":")[0]
    # Numeric, so that Kubernetes can enforce runAsNonRoot without the image's passwd.
    assert uid.isdigit() and int(uid) == 10001


def test_entrypoint_is_the_console_script() -> None:
    stage = dict(final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == ["sandbox-controller"]
    assert json.loads(stage["CMD"]) == ["serve"]
    assert set(stage["EXPOSE"].split()) == {"8080", "8081"}


def test_dockerignore_keeps_the_build_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in lines
    for needed in ("!pyproject.toml", "!README.md", "!sandbox_controller/"):
        assert needed in lines, f"pip wheel . needs {needed[1:]}"
