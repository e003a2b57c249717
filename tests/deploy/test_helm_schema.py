"""Bad values stop `helm install` with a message that names the value, before anything runs."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.deploy.deploytools import agent

Template = Callable[[dict[str, Any] | None], subprocess.CompletedProcess[str]]


def scaling(**values: Any) -> dict[str, Any]:
    return agent(controller={"scaling": values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (scaling(prewarmPoolSize="five"), "prewarmPoolSize: Invalid type. Expected: integer"),
        (scaling(maxTotalJobs=-1), "maxTotalJobs: Must be greater than or equal to 1"),
        (scaling(maxSessionsPerUser=-3), "maxSessionsPerUser: Must be greater than or equal to 1"),
        (scaling(prewarmPoolSize=-1), "prewarmPoolSize: Must be greater than or equal to 0"),
        (
            scaling(maxConcurrentCreates=0),
            "maxConcurrentCreates: Must be greater than or equal to 1",
        ),
        (scaling(maxTotalJobs=2.5), "maxTotalJobs: Invalid type. Expected: integer"),
        (
            scaling(prewarmPoolSize=60, maxTotalJobs=50),
            "prewarmPoolSize (60) must not be greater than "
            "agentSandbox.controller.scaling.maxTotalJobs (50)",
        ),
        (agent(controller={"idleTimeout": "soon"}), "idleTimeout: Does not match pattern"),
        (agent(controller={"maxLifetime": "-5m"}), "maxLifetime: Does not match pattern"),
        (
            agent(controller={"replicas": 2}),
            "agentSandbox.controller.replicas > 1 needs agentSandbox.database.url",
        ),
        (
            agent(proxy={"ingress": {"enabled": True}}),
            "agentSandbox.proxy.ingress.host must be set",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_values_are_refused_with_a_message(
    helm_template: Template, values: dict[str, Any], message: str
) -> None:
    proc = helm_template(values)
    assert proc.returncode != 0, "helm accepted values it should refuse"
    assert message in proc.stderr


def test_prewarm_equal_to_the_cap_is_allowed(helm_template: Template) -> None:
    # The boundary: a pool as large as the cap is odd but not wrong.
    proc = helm_template(scaling(prewarmPoolSize=50, maxTotalJobs=50))
    assert proc.returncode == 0, proc.stderr


def test_prewarm_may_be_zero(helm_template: Template) -> None:
    proc = helm_template(scaling(prewarmPoolSize=0))
    assert proc.returncode == 0, proc.stderr
