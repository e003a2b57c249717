from __future__ import annotations

from websockets.asyncio.client import connect

from .conftest import Stack


async def test_contract_metrics_are_exposed(stack: Stack) -> None:
    token = stack.session()
    headers = {"x-sandbox-token": token}
    await stack.client.get(stack.base + "/s/sess-a/healthz", headers=headers)
    await stack.client.get(stack.base + "/s/sess-a/healthz")
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers):
        text = (await stack.client.get(stack.base + "/metrics")).text
    assert 'sandbox_proxy_requests_total{code="200"} 1.0' in text
    assert 'sandbox_proxy_requests_total{code="401"} 1.0' in text
    assert 'sandbox_proxy_requests_total{code="101"} 1.0' in text
    assert "sandbox_proxy_upstream_seconds_count 1.0" in text
    assert "sandbox_proxy_websockets_open 1.0" in text
    health = await stack.client.get(stack.base + "/healthz")
    ready = await stack.client.get(stack.base + "/readyz")
    assert (health.status_code, ready.status_code) == (200, 200)
