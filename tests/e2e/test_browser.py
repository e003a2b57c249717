"""In a real browser (Debian's chromium, driven by Playwright): what one session's page can
reach of another's, where the token ends up, and which pages may open a session's
WebSocket with its cookie. Chromium resolves ``*.localhost`` to loopback, so
``SANDBOX_PROXY_SESSION_DOMAIN=localhost`` needs no DNS."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Mount, Route

from sandbox_controller import devsandbox

from ..proxy.conftest import Served, Stack, running_stack, serve, token_for

SECRET_TEXT = "the secret of session A"

# A sandbox page that tries to read a URL and shows the outcome in its title.
READER = """<!doctype html><title></title><script>
fetch(%r, {credentials: "include"})
  .then(r => r.text()).then(t => { document.title = "read: " + t; })
  .catch(() => { document.title = "blocked"; });
</script>"""
# An editor page that opens a WebSocket and shows the outcome in its title.
OPENER = """<!doctype html><title></title><script>
const ws = new WebSocket(%r);
ws.onopen = () => ws.send("hi");
ws.onmessage = (e) => { document.title = "echo: " + e.data; ws.close(); };
ws.onclose = () => { if (!document.title) document.title = "refused"; };
</script>"""


async def reader_page(request: Request) -> HTMLResponse:
    return HTMLResponse(READER % request.query_params["target"])


async def opener_page(request: Request) -> HTMLResponse:
    return HTMLResponse(OPENER % request.query_params["url"])


def sandbox_app() -> Starlette:
    """What a hostile sandbox serves: a page that reaches for another session."""
    return Starlette(
        routes=[
            Route("/page", reader_page),
            Route("/secret", lambda _: PlainTextResponse(SECRET_TEXT)),
            Mount("/", devsandbox.build_app()),
        ]
    )


async def title_of(page: Any, url: str) -> str:
    await page.goto(url)
    await page.wait_for_function("document.title !== ''", timeout=10_000)
    return str(await page.title())


async def sessions(stack: Stack, served: Served) -> tuple[str, str]:
    for sid in ("sessa", "sessb"):
        stack.controller.add(sid, "ready", served.address)
    return token_for("sessa"), token_for("sessb")


async def test_subdomain_mode_isolates_sessions_and_path_mode_does_not(browser: Any) -> None:
    sandbox = await serve(sandbox_app())
    try:
        async with running_stack(proxy_session_domain="localhost") as stack:
            token_a, token_b = await sessions(stack, sandbox)
            page = await (await browser.new_context()).new_page()
            origin_a = f"http://sessa.localhost:{stack.proxy_port}"
            origin_b = f"http://sessb.localhost:{stack.proxy_port}"
            # The user opens session A by its link: the token leaves the address bar.
            await page.goto(f"{origin_a}/secret?token={token_a}&x=1")
            assert page.url == f"{origin_a}/secret?x=1"
            assert SECRET_TEXT in await page.content()
            # Then a page of session B tries to read session A: another origin, refused.
            target = f"{origin_a}/secret"
            assert await title_of(page, f"{origin_b}/page?target={target}&token={token_b}") == (
                "blocked"
            )
            # Session A's own page still reads its own paths by cookie.
            assert await title_of(page, f"{origin_a}/page?target=/secret") == (
                f"read: {SECRET_TEXT}"
            )

        async with running_stack() as stack:  # path mode: one origin for every session
            token_a, token_b = await sessions(stack, sandbox)
            page = await (await browser.new_context()).new_page()
            base = f"http://127.0.0.1:{stack.proxy_port}"
            await page.goto(f"{base}/s/sessa/secret?token={token_a}")
            assert page.url == f"{base}/s/sessa/secret"
            # Documented, not hidden (README): B's page reads A's answer with A's cookie.
            url = f"{base}/s/sessb/page?target=/s/sessa/secret&token={token_b}"
            assert await title_of(page, url) == f"read: {SECRET_TEXT}"
    finally:
        await sandbox.stop()


async def test_only_an_allowed_editor_origin_opens_a_websocket_by_cookie(browser: Any) -> None:
    sandbox = await serve(sandbox_app())
    pages = [Route("/open", opener_page), Route("/page", reader_page)]
    editor = await serve(Starlette(routes=pages))
    stranger = await serve(Starlette(routes=pages))
    try:
        allowed = f"http://127.0.0.1:{editor.port}"
        async with running_stack(proxy_allowed_origins=allowed) as stack:
            token_a, _ = await sessions(stack, sandbox)
            page = await (await browser.new_context()).new_page()
            base = f"http://127.0.0.1:{stack.proxy_port}"
            await page.goto(f"{base}/s/sessa/healthz?token={token_a}")  # sets the cookie
            ws_url = f"ws://127.0.0.1:{stack.proxy_port}/s/sessa/ws"
            assert await title_of(page, f"{allowed}/open?url={ws_url}") == "echo: hi"
            before = metric_count(await stack.client.get(base + "/metrics"), "403")
            other = f"http://127.0.0.1:{stranger.port}/open?url={ws_url}"
            assert await title_of(page, other) == "refused"
            after = metric_count(await stack.client.get(base + "/metrics"), "403")
            assert after == before + 1  # refused by the proxy (origin_mismatch), not lost
            # A GET by cookie from the stranger's page (same site: one host, other ports,
            # so the browser sends the cookie, and an Origin) is refused as well, where
            # before it reached the sandbox and only the browser kept the answer unread.
            secret = f"{base}/s/sessa/secret"
            assert await title_of(page, f"{other.partition('/open')[0]}/page?target={secret}") == (
                "blocked"
            )
            assert metric_count(await stack.client.get(base + "/metrics"), "403") == after + 1
            # The editor's own GET by cookie goes through (reading it is CORS's business).
            await title_of(page, f"{allowed}/page?target={secret}")
            assert metric_count(await stack.client.get(base + "/metrics"), "403") == after + 1
    finally:
        await sandbox.stop()
        await editor.stop()
        await stranger.stop()


def metric_count(resp: Any, code: str) -> float:
    prefix = f'sandbox_proxy_requests_total{{code="{code}"}} '
    for line in resp.text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0
