"""The claim hook end to end on kubesim: each pod's container gets its claim secret as
env, kubesim's workload (devsandbox) reads it there, and a warm claim delivers env."""

from __future__ import annotations

import httpx

from sandbox_controller.backends.base import LABEL_CREATE_ID
from sandbox_controller.sandbox_contract import ENV_CLAIM_SECRET, claim_secret, hook_key

from .conftest import NAMESPACE, Kube


async def test_a_warm_claim_delivers_env_to_a_kubesim_workload(kube: Kube) -> None:
    sim = await kube.sim(workload=True)
    ctl = await kube.controller(sim, prewarm_pool_size=2)
    await ctl.wait_idle_pods(2)
    response = await ctl.client.post(
        "/sessions",
        json={"user_id": "alice", "thread_id": "t1", "env": {"REPO_TOKEN": "tok-123"}},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "ready"
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_session_requests_total{outcome="warm"} 1.0' in metrics
    assert "sandbox_claim_hook_failures_total 0.0" in metrics

    pod = sim.store.get("pods", NAMESPACE, body["pod"])
    secret = claim_secret(
        hook_key(b"test-token-secret"), pod["metadata"]["labels"][LABEL_CREATE_ID]
    )
    for container in pod["spec"]["containers"]:
        assert {"name": ENV_CLAIM_SECRET, "value": secret} in container["env"]
    async with httpx.AsyncClient() as direct:
        claimed = await direct.get(
            f"http://{pod['status']['podIP']}:8080/_sandbox/claim",
            headers={"Authorization": f"Bearer {secret}"},
        )
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["env"] == {"REPO_TOKEN": "tok-123"}
    assert claimed.json()["session_id"] == body["id"]
