"""The pod built from the template: the controller's labels, and the claim secret as
env on every container (replacing one the template may carry)."""

from __future__ import annotations

from sandbox_controller.backends.base import LABEL_MANAGED_BY
from sandbox_controller.backends.kube_template import DEFAULT_TEMPLATE, build_pod, default_template
from sandbox_controller.sandbox_contract import ENV_CLAIM_SECRET


def test_the_claim_secret_reaches_every_container_once() -> None:
    template = {
        **DEFAULT_TEMPLATE,
        "spec": {
            "containers": [
                {"name": "sandbox", "env": [{"name": "A", "value": "1"}]},
                {"name": "sidecar", "env": [{"name": ENV_CLAIM_SECRET, "value": "stale"}]},
            ]
        },
    }
    pod = build_pod(template, {"x": "y"}, "hash", env={ENV_CLAIM_SECRET: "s3cret"})
    sandbox, sidecar = pod["spec"]["containers"]
    assert sandbox["env"] == [
        {"name": "A", "value": "1"},
        {"name": ENV_CLAIM_SECRET, "value": "s3cret"},
    ]
    assert sidecar["env"] == [{"name": ENV_CLAIM_SECRET, "value": "s3cret"}]
    assert pod["metadata"]["labels"]["x"] == "y" and LABEL_MANAGED_BY in pod["metadata"]["labels"]
    # The template itself is untouched, and no env means none added.
    assert template["spec"]["containers"][1]["env"][0]["value"] == "stale"
    plain = build_pod(DEFAULT_TEMPLATE, {}, "hash")
    assert "env" not in plain["spec"]["containers"][0]


def test_the_built_in_template_carries_the_disk_limits() -> None:
    pod = default_template(20 * 2**30, 2 * 2**30)
    [container] = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["ephemeral-storage"] == str(22 * 2**30)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["emptyDir"] for v in pod["spec"]["volumes"]}
    assert {path: volumes[name] for path, name in mounts.items()} == {
        "/tmp": {"sizeLimit": str(20 * 2**30)},
        "/workspace": {"sizeLimit": str(20 * 2**30)},
    }
    assert "volumes" not in DEFAULT_TEMPLATE["spec"]  # the shared default is left alone
