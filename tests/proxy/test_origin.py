"""Origin checks: a cookie rides along on requests any page makes, so a cookie-authenticated
upgrade or write must come from the session's own origin or an allowed editor origin."""

from __future__ import annotations

import pytest
import websockets
from websockets.asyncio.client import connect

from .conftest import Stack, running_stack

EDITOR = "https://editor.example"


def cookie_of(token: str) -> str:
    return f"sandbox_token={token}"


async def ws_status(stack: Stack, headers: dict[str, str]) -> int:
    """101 if the upgrade opened (and echoed), else the refusal's status."""
    try:
        async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=headers) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            return 101
    except websockets.InvalidStatus as exc:
        return exc.response.status_code


async def post_status(stack: Stack, headers: dict[str, str]) -> int:
    resp = await stack.client.post(stack.base + "/s/sess-a/echo", content=b"x", headers=headers)
    if resp.status_code == 403:
        assert resp.json()["error"]["code"] == "origin_mismatch"
    return resp.status_code


async def test_the_origin_matrix() -> None:
    async with running_stack(proxy_allowed_origins=f"{EDITOR}, https://other.example") as stack:
        token = stack.session("sess-a")
        cookie = {"cookie": cookie_of(token)}
        header = {"x-sandbox-token": token}
        cases = {
            "cookie, foreign origin": (403, {**cookie, "origin": "https://evil.example"}),
            "cookie, null origin": (403, {**cookie, "origin": "null"}),
            "cookie, no origin": (403, cookie),
            "cookie, own origin": (None, {**cookie, "origin": stack.base}),
            "cookie, allowed editor": (None, {**cookie, "origin": EDITOR}),
            "header token, foreign origin": (None, {**header, "origin": "https://evil.example"}),
            "header token, no origin": (None, header),
            "bearer, no origin": (None, {"authorization": f"Bearer {token}"}),
        }
        before = stack.sandbox.count
        refused = 0
        for name, (expected, headers) in cases.items():
            assert await ws_status(stack, headers) == (expected or 101), name
            assert await post_status(stack, headers) == (expected or 200), name
            refused += 2 if expected else 0
        # Refusals never reached the sandbox; everything else did.
        assert stack.sandbox.count - before == 2 * len(cases) - refused

        # Reads stay open to cookie-only navigations (a link, an <img>): GET has no effect.
        resp = await stack.client.get(stack.base + "/s/sess-a/healthz", headers=cookie)
        assert resp.status_code == 200


@pytest.mark.parametrize("public", ["https://sandbox.example.com", "http://127.0.0.1:8081"])
async def test_cookie_is_secure_whenever_the_public_url_is_https(public: str) -> None:
    async with running_stack(proxy_public_url=public) as stack:
        token = stack.session("sess-a")
        resp = await stack.client.get(stack.base + "/s/sess-a/", params={"token": token})
        assert resp.status_code == 303
        secure = "; Secure" in resp.headers["set-cookie"]
        assert secure is public.startswith("https://")
