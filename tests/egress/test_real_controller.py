"""The egress proxy against the real controller (E2's /internal/egress/authorize and
/denials): a session opened with a grant and a secret through the API, its pod's
credential, the swap, a denial visible at GET /sessions/{id}/egress, and the session's
end closing the door within the answer's ttl."""

from __future__ import annotations

import asyncio

from sandbox_controller.backends.base import LABEL_CREATE_ID
from sandbox_controller.sandbox_contract import egress_credential, hook_key

from ..conftest import API_TOKEN, ControllerFactory
from ..eventually import eventually
from .conftest import World, start_egress_proxy, stop_process

TOKEN_SECRET = "egress-e2e-token-secret-0123456789"
VALUE = "ghp_real_value_from_the_api_0042"


async def test_a_session_through_the_real_controller(
    world: World, start_controller: ControllerFactory
) -> None:
    ctl = await start_controller(
        token_secret=TOKEN_SECRET,
        egress="enforce",
        egress_allow="allowed.test",
        egress_grantable="*.secret.test",
    )
    opened = await ctl.client.post(
        "/sessions",
        json={
            "user_id": "u",
            "thread_id": "t",
            "wait_seconds": 30,
            "egress": {"allow": ["api.secret.test"]},
            "secrets": [
                {
                    "name": "GITHUB_TOKEN",
                    "value": VALUE,
                    "hosts": ["api.secret.test"],
                    "header": "Authorization",
                    "format": "Bearer {value}",
                }
            ],
        },
    )
    assert opened.status_code in (200, 201), opened.text
    session = opened.json()
    create_id = ctl.sandboxes()[session["pod"]]["labels"][LABEL_CREATE_ID]
    password = egress_credential(hook_key(TOKEN_SECRET.encode()), create_id)
    # The placeholder, as the sandbox's env holds it (here read from the same answer the
    # proxy gets: the env is E2's to test).
    grant = await ctl.client.post(
        "/internal/egress/authorize", json={"user": create_id, "password": password}
    )
    placeholder = grant.json()["secrets"][0]["placeholder"]
    assert VALUE not in placeholder

    log = world.proxy_log.with_name("real-controller-proxy.log")
    proxy, port = await asyncio.to_thread(
        start_egress_proxy,
        world.net,
        ctl.url,
        API_TOKEN,
        world.ca.cert,
        (world.deploy_ca, world.deploy_key),
        log,
    )
    try:

        def curl(url: str, *args: str) -> int:
            return world.curl(url, *args, user=create_id, password=password, port=port)[0]

        assert await asyncio.to_thread(curl, "https://allowed.test/") == 200
        code = await asyncio.to_thread(
            curl, "https://api.secret.test/user", "-H", f"Authorization: Bearer {placeholder}"
        )
        assert code == 200
        headers = {k.lower(): v for k, v in world.received()[-1]["headers"]}
        assert headers["authorization"] == f"Bearer {VALUE}"
        assert await asyncio.to_thread(curl, "https://unlisted.test/") == 403

        async def denial_listed() -> bool:
            egress = (await ctl.client.get(f"/sessions/{session['id']}/egress")).json()
            return any(d["host"] == "unlisted.test" for d in egress["denials"])

        await eventually(denial_listed, within=10, what="the denial at GET .../egress")

        assert (await ctl.client.delete(f"/sessions/{session['id']}")).status_code == 204

        async def refused() -> bool:
            return await asyncio.to_thread(curl, "https://allowed.test/") == 403

        await eventually(refused, within=10, what="the ended session's 403")
        assert VALUE not in log.read_text()
    finally:
        await asyncio.to_thread(stop_process, proxy)
