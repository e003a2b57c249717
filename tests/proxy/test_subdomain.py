"""Subdomain mode: each session is served at its own host, so it is its own browser origin."""

from __future__ import annotations

from websockets.asyncio.client import connect

from sandbox_controller.config import Settings

from .conftest import running_stack

DOMAIN = "sandbox.test"


def test_connect_url_follows_the_mode() -> None:
    path = Settings(proxy_public_url="https://proxy.example.com")
    assert path.connect_url("abc") == "https://proxy.example.com/s/abc/"
    sub = Settings(proxy_public_url="https://proxy.example.com", proxy_session_domain=DOMAIN)
    assert sub.connect_url("abc") == f"https://abc.{DOMAIN}/"
    local = Settings(proxy_port=8123, proxy_session_domain="localhost")
    assert local.connect_url("abc") == "http://abc.localhost:8123/"


async def test_a_session_host_serves_the_sandbox_at_root_with_a_host_only_cookie() -> None:
    sid = "0a1b2c3d4e5f"
    async with running_stack(proxy_session_domain=DOMAIN) as stack:
        token = stack.session(sid)
        host = f"{sid}.{DOMAIN}:{stack.proxy_port}"

        resp = await stack.client.get(
            stack.base + "/headers", params={"token": token, "q": "1"}, headers={"host": host}
        )
        assert resp.status_code == 303 and resp.headers["location"] == "/headers?q=1"
        cookie = resp.headers["set-cookie"]
        assert "Path=/;" in cookie and "Domain" not in cookie

        headers = {"host": host, "cookie": cookie.split(";")[0]}
        resp = await stack.client.get(stack.base + "/headers?q=1", headers=headers)
        assert resp.status_code == 200
        seen = dict(line.split(": ", 1) for line in resp.text.splitlines() if ": " in line)
        assert seen["path"] == "/headers"  # no prefix to strip
        assert "x-forwarded-prefix" not in seen
        assert seen["x-forwarded-host"] == host

        # A cookie-authenticated WebSocket from the session's own origin opens.
        url = f"ws://{host}/ws"  # dialled at 127.0.0.1: *.sandbox.test has no DNS
        ws_headers = {"cookie": headers["cookie"], "origin": f"http://{host}"}
        async with connect(
            url, additional_headers=ws_headers, host="127.0.0.1", port=stack.proxy_port
        ) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"


async def test_only_session_hosts_forward_in_subdomain_mode() -> None:
    async with running_stack(proxy_session_domain=DOMAIN) as stack:
        token = stack.session("sess1")
        auth = {"x-sandbox-token": token}

        async def status(host: str, path: str) -> int:
            headers = {**auth, "host": host}
            return (await stack.client.get(stack.base + path, headers=headers)).status_code

        # Path mode is off: /s/ on the proxy's own host would put sessions on one origin.
        assert await status(f"127.0.0.1:{stack.proxy_port}", "/s/sess1/healthz") == 404
        assert await status(f"a.sess1.{DOMAIN}", "/headers") == 404  # not one label
        assert await status(f"sess1.{DOMAIN}.evil.example", "/headers") == 404
        assert await status(f"SESS1.{DOMAIN}", "/healthz") == 200  # hosts are case-blind
        # The proxy's own endpoints still answer on its own host.
        resp = await stack.client.get(stack.base + "/healthz")
        assert resp.status_code == 200
        assert stack.sandbox.count == 1
