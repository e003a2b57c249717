"""In-cluster callers by their own Kubernetes token (SANDBOX_TOKEN_REVIEW_USERS): the
controller asks the API server (kubesim, answering TokenReview over real HTTP to the
real kubernetes-asyncio client), lets in only the user names it lists, refuses the
rest before reading a body, and asks once per token per TTL."""

from __future__ import annotations

from pathlib import Path

import httpx

from sandbox_controller.kubesim import KubeSim

from ..conftest import API_TOKEN, ControllerFactory

BACKEND = "system:serviceaccount:editors:backend"
USERS = {
    "editor-backend-sa-token": BACKEND,
    "some-other-pod-sa-token": "system:serviceaccount:other:pod",
}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_a_listed_service_account_opens_the_api_and_no_other_token_does(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    async with KubeSim(kubeconfig=tmp_path / "kubeconfig", users=USERS) as sim:
        assert sim.kubeconfig_path is not None
        ctl = await start_controller(
            token_review_users=f"{BACKEND}, system:serviceaccount:editors:ci",
            kubeconfig=str(sim.kubeconfig_path),
        )
        await ctl.wait_idle_pods(1)
        async with httpx.AsyncClient(base_url=ctl.url, timeout=30) as http:
            for _ in range(3):
                pool = await http.get("/pool", headers=bearer("editor-backend-sa-token"))
                assert pool.status_code == 200, pool.text
            opened = await http.post(
                "/sessions",
                json={"user_id": "ada", "thread_id": "t", "wait_seconds": 30},
                headers=bearer("editor-backend-sa-token"),
            )
            assert opened.status_code == 201, opened.text
            # Known to the cluster but not listed, unknown, or no bearer at all: refused.
            for token in ("some-other-pod-sa-token", "made-up-token"):
                for method, path in (("GET", "/pool"), ("POST", "/sessions")):
                    refused = await http.request(
                        method, path, headers=bearer(token), json={"user_id": "x"}
                    )
                    assert refused.status_code == 401, (token, path, refused.text)
            # The API token still works beside it.
            assert (await http.get("/pool", headers=bearer(API_TOKEN))).status_code == 200
        reviews = [c for c in sim.calls if c.resource == "tokenreviews"]
        # One review per token within the TTL, asked as the controller's own user.
        assert len(reviews) == 3, [(c.path, c.status) for c in reviews]
        assert {c.user for c in reviews} == {"kubesim"}
        assert all(c.status == 201 for c in reviews)
