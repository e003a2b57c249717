"""The auth matrix: each refusal gets its status, and none reaches the sandbox."""

from __future__ import annotations

import logging
import time

import pytest
import websockets
from websockets.asyncio.client import connect

from proxy.auth import Verifier
from sandbox_controller.tokens import TokenError, issue_token, public_key

from .conftest import SECRET, Stack, raw_request, token_for


async def status_of(stack: Stack, path: str, **kw: object) -> int:
    # A ?token= navigation is sent back without it first (303); the cookie then carries it.
    resp = await stack.client.get(stack.base + path, follow_redirects=True, **kw)  # type: ignore[arg-type]
    if resp.status_code >= 400:
        assert resp.json()["error"]["code"]
    return resp.status_code


async def test_refusals_get_their_codes_and_never_reach_the_sandbox(stack: Stack) -> None:
    good = stack.session("sess-a")
    other = stack.session("sess-b")
    stack.session("sess-ended", state="ended")
    stack.session("sess-prov", state="provisioning")
    forged = token_for("sess-a", secret="not-the-secret")
    expired = token_for("sess-a", ttl=-10)
    bearer = {"authorization": "Bearer x"}
    cases = {
        "no token": (401, "/s/sess-a/healthz", {}),
        "malformed": (401, "/s/sess-a/healthz", {"headers": {"x-sandbox-token": "nope"}}),
        "forged": (401, "/s/sess-a/healthz", {"headers": {"x-sandbox-token": forged}}),
        "expired": (401, "/s/sess-a/healthz", {"headers": {"x-sandbox-token": expired}}),
        "empty bearer": (401, "/s/sess-a/healthz", {"headers": bearer}),
        "other session": (403, "/s/sess-a/healthz", {"headers": {"x-sandbox-token": other}}),
        "unknown": (404, "/s/sess-x/healthz", {"params": {"token": token_for("sess-x")}}),
        "provisioning": (409, "/s/sess-prov/", {"params": {"token": token_for("sess-prov")}}),
        "ended": (410, "/s/sess-ended/", {"params": {"token": token_for("sess-ended")}}),
        "outside /s/": (404, "/sess-a/healthz", {"headers": {"x-sandbox-token": good}}),
    }
    for name, (expected, path, kw) in cases.items():
        assert await status_of(stack, path, **kw) == expected, name
    assert stack.sandbox.count == 0


@pytest.mark.parametrize(
    "target",
    [
        "/s/sess-a/../sess-b/headers",
        "/s/sess-a/%2e%2e/sess-b/headers",
        "/s/sess-a/%2E%2e/sess-b/headers",
        "/s/sess-a/.%2e/sess-b/headers",
        "/s/sess-a/%252e%252e/sess-b/headers",
        "/s/sess-a/./headers",
        "/s/../s/sess-b/headers",
        "/s/sess-a%2F..%2Fsess-b/headers",
    ],
)
async def test_dot_segments_are_refused_before_auth(stack: Stack, target: str) -> None:
    token = stack.session("sess-a")
    stack.session("sess-b")
    assert await raw_request(stack.proxy_port, target, {"X-Sandbox-Token": token}) == 400
    assert stack.sandbox.count == 0
    assert stack.controller.lookups == []


@pytest.mark.parametrize("carrier", ["authorization", "header", "query"])
async def test_each_carrier_opens_the_session_and_is_stripped(stack: Stack, carrier: str) -> None:
    token = stack.session("sess-a")
    kw: dict[str, object] = {
        "authorization": {"headers": {"authorization": f"Bearer {token}"}},
        "header": {"headers": {"x-sandbox-token": token}},
        "query": {"params": {"token": token, "keep": "1"}},
    }[carrier]
    url = stack.base + "/s/sess-a/headers"
    resp = await stack.client.get(url, follow_redirects=True, **kw)  # type: ignore[arg-type]
    assert resp.status_code == 200
    if carrier == "query":
        # The token left the URL: one 303 to the same path without it, then the cookie.
        assert [r.status_code for r in resp.history] == [303]
        assert resp.history[0].headers["location"] == "/s/sess-a/headers?keep=1"
        assert token not in str(resp.url)
    seen = resp.text.lower()
    assert token.lower() not in seen
    assert "authorization" not in seen and "x-sandbox-token" not in seen
    assert "sandbox_token" not in seen
    assert "path: /headers" in seen
    if carrier == "query":
        assert "query: keep=1" in seen
    assert stack.sandbox.count == 1


async def test_cookie_is_set_then_used_alone_for_http_and_websocket(stack: Stack) -> None:
    token = stack.session("sess-a")
    resp = await stack.client.get(stack.base + "/s/sess-a/healthz", params={"token": token})
    assert resp.status_code == 303 and resp.headers["location"] == "/s/sess-a/healthz"
    cookie = resp.headers["set-cookie"]
    assert "Secure" not in cookie  # plain http here; test_origin covers an https public URL
    assert "Path=/s/sess-a/" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    value = cookie.split(";")[0]

    # The cookie alone, next to a cookie of the sandbox app's own that must pass through.
    headers = {"cookie": f"app=1; {value}"}
    resp = await stack.client.get(stack.base + "/s/sess-a/headers", headers=headers)
    assert resp.status_code == 200
    assert "cookie: app=1" in resp.text and token not in resp.text
    own = {**headers, "origin": stack.base}  # a cookie-authenticated upgrade needs Origin
    async with connect(stack.ws_base + "/s/sess-a/ws", additional_headers=own) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"

    # The same cookie presented on another session's path is refused.
    stack.session("sess-b")
    resp = await stack.client.get(stack.base + "/s/sess-b/headers", headers=headers)
    assert resp.status_code == 403


async def test_websocket_upgrades_are_refused_with_http_codes(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stack.session("sess-a")
    other = stack.session("sess-b")
    for url, headers, expected in [
        ("/s/sess-a/ws", {}, 401),
        ("/s/sess-a/ws", {"x-sandbox-token": other}, 403),
        ("/s/sess-a/ws", {"x-sandbox-token": token_for("sess-a", ttl=-1)}, 401),
        ("/elsewhere", {}, 404),
    ]:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(stack.ws_base + url, additional_headers=headers):
                pass
        assert info.value.response.status_code == expected
    assert stack.sandbox.count == 0
    # Quiet and honest: one INFO line per refusal with its status and code, no ERROR.
    refusals = [r.getMessage() for r in caplog.records if "refused a WebSocket" in r.message]
    assert [m.split(": ")[-1] for m in refusals] == [
        "401 unauthorized",
        "403 forbidden",
        "401 unauthorized",
        "404 not_found",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_kept_token_is_still_refused_once_it_expires() -> None:
    verifier = Verifier([public_key(SECRET.encode())])
    now = time.time()
    token = issue_token(SECRET.encode(), "sess-a", now + 60)
    assert verifier.verify(token, now).session_id == "sess-a"
    assert verifier.verify(token, now + 59).session_id == "sess-a"  # kept: no signature check
    with pytest.raises(TokenError, match="expired"):
        verifier.verify(token, now + 60)


def test_only_tokens_that_verified_are_kept_and_the_store_is_bounded() -> None:
    verifier = Verifier([public_key(SECRET.encode())])
    now = time.time()
    # Signed by another key but naming ours: the signature is what fails.
    ours = issue_token(SECRET.encode(), "sess-a", now + 60).split(".")[0]
    forged = ours + "." + issue_token(b"not-the-secret", "sess-a", now + 60).partition(".")[2]
    for _ in range(2):  # a refusal is not remembered as anything else
        with pytest.raises(TokenError, match="signature"):
            verifier.verify(forged, now)
    tokens = [issue_token(SECRET.encode(), f"s{i}", now + 60) for i in range(Verifier.MAX_KEPT + 5)]
    for token in tokens:
        verifier.verify(token, now)
    assert len(verifier._valid) <= Verifier.MAX_KEPT
    assert verifier.verify(tokens[0], now).session_id == "s0"  # verified afresh
