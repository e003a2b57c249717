"""Issue 17, rows 9-11: what the proxy's path, redirect, cookie and origin rules must
hold against, however a request spells it. Real proxy, real sandbox servers on loopback;
requests are written byte for byte on raw sockets, so no client normalises them first.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..proxy.conftest import Counting, Stack, running_stack, serve

DOMAIN = "sandbox.test"
EDITOR = "https://editor.example"


async def raw(port: int, request_line: str, **headers: str) -> tuple[int, dict[str, list[str]]]:
    """One request as written; the status and the headers of the answer (and its body,
    under the name "")."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [request_line] + [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
    body = await asyncio.wait_for(reader.read(), 10)  # to the close
    writer.close()
    status_line, *header_lines = head.strip().split("\r\n")
    answer: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer.setdefault(name.strip().lower(), []).append(value.strip())
    answer[""] = [body.decode("latin-1")]
    return int(status_line.split()[1]), answer


@pytest.fixture(params=["path", "subdomain"])
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    domain = DOMAIN if request.param == "subdomain" else None
    async with running_stack(proxy_session_domain=domain, proxy_allowed_origins=EDITOR) as s:
        yield s


def where(stack: Stack, session_id: str, path: str) -> tuple[str, str]:
    """The request target and Host that reach ``path`` of a session, in the stack's mode."""
    if stack.proxy.app.session_domain is None:
        return f"/s/{session_id}{path}", "proxy"
    return path, f"{session_id}.{DOMAIN}:{stack.proxy_port}"


# Every spelling of /_sandbox/<hook> the sandbox's server could decode into the hooks.
HOOK_SPELLINGS = [
    "/_sandbox%2Fstatus",
    "/_sandbox%2fstatus",
    "/_sandbox%2Fbusy",
    "/%5Fsandbox%2Fclaim",
    "/%5f%53ANDBOX%2frelease",
    "/_sandbox%252Fstatus",
    "/%255Fsandbox%252Fstatus",
    "/%2F_sandbox/status",
    "/%2F%2F_sandbox%2Fstatus",
    "/_sandbox%5Cstatus",
    "/_sandbox;x/status",
    "/_SANDBOX%2FSTATUS",
]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_every_encoded_spelling_of_the_hooks_is_404_and_reaches_no_sandbox(
    stack: Stack, method: str
) -> None:
    token = stack.session("sess1")
    for spelling in HOOK_SPELLINGS:
        target, host = where(stack, "sess1", spelling)
        status, _ = await raw(
            stack.proxy_port,
            f"{method} {target} HTTP/1.1",
            host=host,
            x_sandbox_token=token,
            content_length="0",
        )
        assert status == 404, spelling
    assert stack.sandbox.count == 0
    # The sandbox's own paths that merely look alike are forwarded.
    for path in ("/_sandboxes%2Fx", "/app/_sandbox%2Fstatus", "/healthz"):
        target, host = where(stack, "sess1", path)
        await raw(stack.proxy_port, f"GET {target} HTTP/1.1", host=host, x_sandbox_token=token)
    assert stack.sandbox.count == 3


def resolves_to_same_host(location: str, host: str) -> bool:
    """Where a browser goes from ``location``: backslashes are slashes to it, and it drops
    tabs and newlines inside a URL."""
    as_browser = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    target = urlsplit(urljoin(f"http://{host}/here", as_browser))
    return target.netloc == host and as_browser.startswith("/") and not as_browser[1:2] == "/"


REDIRECT_PAYLOADS = [
    "//evil.example/x",
    "/\\evil.example/",
    "/\\\\evil.example/x",
    "///evil.example/x",
    "/\\/evil.example",
    "//\\evil.example",
    "/%2F/evil.example",
    "//evil.example",
    "//evil.example:443/@x",
]


async def test_a_token_redirect_stays_on_the_same_host() -> None:
    async with running_stack(proxy_session_domain=DOMAIN) as stack:
        token = stack.session("sess1")
        host = f"sess1.{DOMAIN}:{stack.proxy_port}"
        for payload in REDIRECT_PAYLOADS:
            status, headers = await raw(
                stack.proxy_port, f"GET {payload}?a=1&token={token} HTTP/1.1", host=host
            )
            assert status == 303, payload
            [location] = headers["location"]
            assert resolves_to_same_host(location, host), (payload, location)
            assert token not in location and location.endswith("?a=1")
        # An ordinary navigation keeps its path.
        status, headers = await raw(
            stack.proxy_port, f"GET /app/x?token={token} HTTP/1.1", host=host
        )
        assert headers["location"] == ["/app/x"]
        assert stack.sandbox.count == 0


async def sets_cookies(request: Request) -> Response:
    response = Response(b"ok")
    for cookie in (
        "a=1; Domain=sandbox.test; Path=/",
        "b=2; Path=/; domain = .sandbox.test; HttpOnly",
        f"c=3; DOMAIN=sess1.{DOMAIN}; Secure; domain=sandbox.test",
        "domain=4; Path=/",
        "e=5; Path=/; SameSite=Lax",
    ):
        response.headers.append("set-cookie", cookie)
    return response


@pytest.mark.parametrize("domain", [DOMAIN, None])
async def test_a_sandbox_cookie_loses_its_domain_and_keeps_the_rest(domain: str | None) -> None:
    cookie_sandbox = Counting(Starlette(routes=[Route("/{path:path}", sets_cookies)]))
    served = await serve(cookie_sandbox)
    try:
        async with running_stack(proxy_session_domain=domain) as stack:
            token = stack.session("sess1")
            stack.controller.add("sess1", "ready", served.address)
            target, host = where(stack, "sess1", "/login")
            status, headers = await raw(
                stack.proxy_port, f"GET {target} HTTP/1.1", host=host, x_sandbox_token=token
            )
    finally:
        await served.stop()
    assert status == 200 and cookie_sandbox.count == 1
    assert headers["set-cookie"] == [
        "a=1; Path=/",
        "b=2; Path=/; HttpOnly",
        "c=3; Secure",
        "domain=4; Path=/",
        "e=5; Path=/; SameSite=Lax",
    ]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "POST"])
async def test_a_cookie_request_from_a_foreign_origin_is_refused_whatever_its_method(
    stack: Stack, method: str
) -> None:
    token = stack.session("sess1")
    target, host = where(stack, "sess1", "/healthz")
    own = f"http://{host}"  # the origin the session's own page is on
    cookie = f"sandbox_token={token}"
    for origin in ("https://evil.example", f"http://sess2.{DOMAIN}:{stack.proxy_port}", "null"):
        status, headers = await raw(
            stack.proxy_port,
            f"{method} {target} HTTP/1.1",
            host=host,
            cookie=cookie,
            origin=origin,
            content_length="0",
        )
        assert status == 403, (method, origin)
        assert method == "HEAD" or '"origin_mismatch"' in headers[""][0]
    assert stack.sandbox.count == 0
    # A navigation carries no Origin; the session's own page and the editor are allowed.
    served = []
    for origin in [None, own, EDITOR] if method in ("GET", "HEAD", "OPTIONS") else [own, EDITOR]:
        extra = {"origin": origin} if origin else {}
        status, _ = await raw(
            stack.proxy_port,
            f"{method} {target} HTTP/1.1",
            host=host,
            cookie=cookie,
            content_length="0",
            **extra,
        )
        served.append(status)
    assert 403 not in served and stack.sandbox.count == len(served)
