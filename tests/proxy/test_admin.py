"""The proxy's FastAPI face: probes, metrics and an OpenAPI document of its own routes."""

from __future__ import annotations

from .conftest import Stack


async def test_openapi_describes_the_proxys_own_endpoints(stack: Stack) -> None:
    doc = (await stack.client.get(stack.base + "/openapi.json")).json()
    paths = doc["paths"]
    assert {"/healthz", "/readyz", "/metrics", "/s/{session_id}/{path}"} <= set(paths)
    forward = paths["/s/{session_id}/{path}"]
    assert {"get", "post", "delete"} <= set(forward)
    statuses = set(forward["get"]["responses"])
    assert {"303", "401", "403", "404", "409", "410", "431", "502", "503", "504"} <= statuses
    described = forward["get"]["responses"]["403"]["content"]["application/json"]["schema"]
    assert "origin_mismatch" in described["description"]


async def test_probes_and_unknown_paths(stack: Stack) -> None:
    assert (await stack.client.get(stack.base + "/healthz")).text == "ok"
    assert (await stack.client.get(stack.base + "/readyz")).status_code == 200
    metrics = await stack.client.get(stack.base + "/metrics")
    assert "sandbox_proxy_websockets_open" in metrics.text
    resp = await stack.client.get(stack.base + "/nowhere")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await stack.client.post(stack.base + "/healthz")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
