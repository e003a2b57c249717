"""Plans from a YAML file (SANDBOX_PLANS_FILE; the chart's ``agentSandbox.plans``).

    plans:
      - name: free
        max_sessions_per_user: 2      # default: SANDBOX_MAX_SESSIONS_PER_USER
        max_pods_per_org: 10          # default: none (only maxTotalJobs)
        warm_share: 0.25              # default: 1 (no share rule)
        sessions_per_minute: 30       # default: none

Every key but ``name`` may be left out; an unknown key is refused, so a typo cannot
silently mean "no limit". Read once, at start-up (config.py); the scheduler sees the
``Plan`` values (model.py) in its ``Limits``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .model import Plan

# A plan's name: what a caller sends in POST /sessions and the metrics' ``plan`` label.
PLAN_NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
PLANS_FILE_MAX = 1024 * 1024


class PlanError(ValueError):
    """The plans file cannot be read or says something wrong; the message says what."""


class _PlanEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, StringConstraints(pattern=PLAN_NAME_PATTERN)]
    max_sessions_per_user: int | None = Field(None, ge=1)
    max_pods_per_org: int | None = Field(None, ge=1)
    warm_share: float = Field(1.0, ge=0.0, le=1.0)
    sessions_per_minute: int | None = Field(None, ge=1)


class _PlansFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    plans: list[_PlanEntry] = Field(default_factory=list)


def parse_plans(text: str) -> tuple[Plan, ...]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise PlanError(f"not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    try:
        parsed = _PlansFile.model_validate(document if document is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise PlanError(f"{where}: {first['msg']}") from None
    names = [entry.name for entry in parsed.plans]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PlanError(f"plan {twice[0]!r} is defined twice")
    return tuple(Plan(**entry.model_dump()) for entry in parsed.plans)


def load_plans(path: str) -> tuple[Plan, ...]:
    try:
        with Path(path).open("rb") as file:
            data = file.read(PLANS_FILE_MAX + 1)
    except OSError as exc:
        raise PlanError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > PLANS_FILE_MAX:
        raise PlanError(f"{path} is larger than {PLANS_FILE_MAX} bytes")
    try:
        return parse_plans(data.decode())
    except UnicodeDecodeError:
        raise PlanError(f"{path} is not UTF-8 text") from None
