"""With egress on, each Kubernetes sandbox pod carries its proxy env and builds its CA
bundle (EGRESS.md seams 1 and 5): kubesim over real HTTP, through the real client."""

from __future__ import annotations

from pathlib import Path

from sandbox_controller.backends.base import LABEL_CREATE_ID, LABEL_TEMPLATE_HASH
from sandbox_controller.egress_env import (
    CA_BUNDLE_VARIABLES,
    KUBE_BUNDLE,
    KUBE_BUNDLE_DIR,
    KUBE_CA_DIR,
    PROXY_VARIABLES,
    SandboxEgress,
)
from sandbox_controller.egress_secrets import SecretSpec, deployment_placeholder
from sandbox_controller.kubesim import KubeSim
from sandbox_controller.sandbox_contract import egress_credential

from .test_kubernetes import NS, make_backend, make_sim

KEY = b"the controller's hook key"
EGRESS = SandboxEgress(
    KEY,
    "http://agent-sandbox-egress.sandboxes.svc:3128",
    ("internal.example",),
    KUBE_BUNDLE,
    (SecretSpec("NPM_TOKEN", "npm-value-never-in-a-pod", ("registry.npmjs.org",)),),
    ca_configmap="rel-egress-ca",
)


async def test_a_pod_gets_its_proxy_env_and_ca_bundle(tmp_path: Path) -> None:
    async with make_sim(tmp_path) as sim:
        plain = await make_backend(sim, tmp_path)
        backend = await make_backend(sim, tmp_path, egress=EGRESS, configmap="second-template")
        try:
            name = await backend.create_pod({})
            pod = sim.store.get("pods", NS, name)
            create_id = pod["metadata"]["labels"][LABEL_CREATE_ID]
            [container] = pod["spec"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"]}
            password = egress_credential(KEY, create_id)
            for variable in PROXY_VARIABLES:
                assert env[variable] == (
                    f"http://{create_id}:{password}@agent-sandbox-egress.sandboxes.svc:3128"
                )
            assert env["NO_PROXY"] == "localhost,127.0.0.1,::1,internal.example"
            assert all(env[v] == KUBE_BUNDLE for v in CA_BUNDLE_VARIABLES)
            assert env["NPM_TOKEN"] == deployment_placeholder(KEY, create_id, "NPM_TOKEN")
            assert "npm-value-never-in-a-pod" not in str(pod)

            [init] = pod["spec"]["initContainers"]
            assert init["image"] == container["image"]
            assert (
                KUBE_BUNDLE in init["command"][-1]
                and f"{KUBE_CA_DIR}/ca.pem" in init["command"][-1]
            )
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            assert volumes["egress-ca"]["configMap"] == {"name": "rel-egress-ca"}
            assert "emptyDir" in volumes["egress-bundle"]
            assert {"name": "egress-bundle", "mountPath": KUBE_BUNDLE_DIR, "readOnly": True} in (
                container["volumeMounts"]
            )
            # Egress on is another pod: a change rolls the warm pool.
            assert pod["metadata"]["labels"][LABEL_TEMPLATE_HASH] != plain.template_hash

            # Without egress, none of it.
            other = await plain.create_pod({})
            bare = sim.store.get("pods", NS, other)
            names = {e["name"] for e in bare["spec"]["containers"][0].get("env") or []}
            assert not names & {*PROXY_VARIABLES, *CA_BUNDLE_VARIABLES, "NPM_TOKEN"}
            assert not bare["spec"].get("initContainers")
        finally:
            await backend.close()
            await plain.close()


async def test_without_a_ca_configmap_no_bundle(tmp_path: Path) -> None:
    sim: KubeSim
    async with make_sim(tmp_path) as sim:
        egress = SandboxEgress(KEY, "http://egress:3128")
        backend = await make_backend(sim, tmp_path, egress=egress)
        try:
            pod = sim.store.get("pods", NS, await backend.create_pod({}))
            env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
            assert set(PROXY_VARIABLES) <= env and not env & set(CA_BUNDLE_VARIABLES)
            assert not pod["spec"].get("initContainers")
        finally:
            await backend.close()
