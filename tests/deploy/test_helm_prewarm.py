"""The chart's prewarm values reach the controller as SANDBOX_PREWARM_*, and the
controller's own settings accept what the chart renders."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from sandbox_controller.config import load_settings
from sandbox_controller.model import PrewarmPolicy
from tests.deploy.deploytools import Render, agent, container_env, find

Template = Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]]


def prewarm(**values: Any) -> dict[str, Any]:
    return agent(controller={"scaling": {"prewarm": values}})


def settings_from(env: dict[str, Any]) -> Any:
    names = ("POLICY", "MIN", "MAX", "TARGET_WARM_HIT_RATE")
    return load_settings(
        **{f"prewarm_{n.lower()}": env[f"SANDBOX_PREWARM_{n}"] for n in names},
        prewarm_pool_size=env["SANDBOX_PREWARM_POOL_SIZE"],
    )


def test_static_is_the_default_and_the_controller_accepts_it(render: Render) -> None:
    env = container_env(find(render(), "Deployment", "-controller"))
    assert {k: v for k, v in env.items() if k.startswith("SANDBOX_PREWARM_")} == {
        "SANDBOX_PREWARM_POOL_SIZE": "5",
        "SANDBOX_PREWARM_POLICY": "static",
        "SANDBOX_PREWARM_MIN": "1",
        "SANDBOX_PREWARM_MAX": "20",
        "SANDBOX_PREWARM_TARGET_WARM_HIT_RATE": "0.99",
    }
    assert settings_from(env).limits().prewarm.policy is PrewarmPolicy.STATIC


def test_adaptive_values_reach_the_controller(render: Render) -> None:
    values = prewarm(policy="adaptive", min=0, max=12, targetWarmHitRate=0.995)
    env = container_env(find(render(values), "Deployment", "-controller"))
    limits = settings_from(env).limits()
    assert (limits.prewarm.policy, limits.prewarm.min, limits.prewarm.max) == (
        PrewarmPolicy.ADAPTIVE,
        0,
        12,
    )
    assert limits.prewarm.target_warm_hit_rate == 0.995


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (prewarm(policy="clever"), "prewarm.policy must be one of the following"),
        (prewarm(min=-1), "min: Must be greater than or equal to 0"),
        (prewarm(targetWarmHitRate=1.5), "targetWarmHitRate: Must be less than 1"),
        (prewarm(colour="blue"), "Additional property colour is not allowed"),
        (
            prewarm(min=8, max=4),
            "agentSandbox.controller.scaling.prewarm.min (8) must not be greater than "
            "agentSandbox.controller.scaling.prewarm.max (4)",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_prewarm_values_are_refused_with_a_message(
    helm_template: Template, values: dict[str, Any], message: str
) -> None:
    proc = helm_template(values)
    assert proc.returncode != 0, "helm accepted values it should refuse"
    assert message in proc.stderr
