"""The plans file (SANDBOX_PLANS_FILE): what it may say, and how a mistake is told at
start-up, naming the variable, rather than meaning "no limit"."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox_controller.config import ConfigError, load_settings
from sandbox_controller.model import Plan
from sandbox_controller.plans import PLANS_FILE_MAX

GOOD = """\
plans:
  - name: starter
    max_sessions_per_user: 2
    max_pods_per_org: 10
    warm_share: 0.25
    sessions_per_minute: 30
  - name: enterprise
"""


def write(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "plans.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_a_plans_file_reaches_the_scheduler_with_the_deployment_defaults_filled_in(
    tmp_path: Path,
) -> None:
    limits = load_settings(plans_file=write(tmp_path, GOOD), max_sessions_per_user=4).limits()
    assert limits.plans == (
        Plan("starter", 2, 10, 0.25, 30),
        Plan("enterprise"),
    )
    assert limits.plan("enterprise") == Plan("enterprise", max_sessions_per_user=4)
    assert limits.plan(None) == Plan("", max_sessions_per_user=4)
    assert limits.plan("gold") is None


def test_without_a_file_there_are_no_plans_and_the_defaults_hold() -> None:
    limits = load_settings().limits()
    assert limits.plans == ()
    assert limits.plan(None) == Plan("", limits.max_sessions_per_user)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plans:\n  - name: a\n    max_pods: 3\n", "plans.0.max_pods: Extra inputs"),
        ("plans:\n  - name: Gold\n", "plans.0.name: String should match pattern"),
        ("plans:\n  - name: a\n  - name: a\n", "plan 'a' is defined twice"),
        ("plans:\n  - name: a\n    warm_share: 1.5\n", "plans.0.warm_share"),
        ("plans:\n  - name: a\n    warm_share: '0.5'\n", "plans.0.warm_share"),
        ("plans:\n  - name: a\n    sessions_per_minute: 0\n", "plans.0.sessions_per_minute"),
        ("plans:\n  - name: a\n    max_sessions_per_user: true\n", "max_sessions_per_user"),
        ("plans: [1, 2", "not YAML at line 1"),
        ("plans: 5\n", "plans: Input should be a valid list"),
        ("- name: a\n", "the document: Input should be a valid dictionary"),
        (b"plans: \xff\n", "is not UTF-8 text"),
        ("plans: []\n" + "#" * PLANS_FILE_MAX, "is larger than"),
    ],
)
def test_a_bad_plans_file_stops_the_start_with_one_line_naming_it(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(plans_file=write(tmp_path, text))
    assert str(refused.value).startswith("SANDBOX_PLANS_FILE: ")
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_missing_plans_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"SANDBOX_PLANS_FILE: cannot read .*nope\.yaml"):
        load_settings(plans_file=str(tmp_path / "nope.yaml"))
