"""Who may use the console, over real HTTP: sign-in, the cookie's flags, CSRF, the
read-only token, the Content-Security-Policy, SANDBOX_CONSOLE=false, and a standby."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from sandbox_controller.console.access import COOKIE

from ..conftest import API_TOKEN, ControllerFactory

VIEWER_TOKEN = "console-viewer-token"
PAGES = ("/console/pool", "/console/sessions", "/console/users", "/console/ends")


@asynccontextmanager
async def sign_in(url: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/console/login", data={"token": token})
        assert response.status_code == 303, response.text
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', html)
    assert found is not None
    return found.group(1)


async def test_pages_need_a_sign_in_and_the_cookie_is_strict(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(console_token=VIEWER_TOKEN)
    async with httpx.AsyncClient(base_url=ctl.url) as anonymous:
        for path in PAGES:
            response = await anonymous.get(path)
            assert response.status_code == 303 and response.headers["location"] == (
                "/console/login"
            )
        assert (await anonymous.get("/console/events")).status_code == 401
        wrong = await anonymous.post("/console/login", data={"token": "guess"})
        assert wrong.status_code == 401 and COOKIE not in wrong.cookies
        # A forged cookie (the viewer's role with an operator's claim) is nobody's.
        anonymous.cookies.set(COOKIE, "operator.9999999999.00.deadbeef", path="/console")
        assert (await anonymous.get("/console/pool")).status_code == 303

    async with httpx.AsyncClient(base_url=ctl.url) as fresh:
        response = await fresh.post("/console/login", data={"token": API_TOKEN})
        behind_tls = await fresh.post(
            "/console/login", data={"token": API_TOKEN}, headers={"x-forwarded-proto": "https"}
        )
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # plain http on loopback
    assert "secure" in behind_tls.headers["set-cookie"].lower()
    async with sign_in(ctl.url, API_TOKEN) as client:
        for path in PAGES:
            page = await client.get(path)
            assert page.status_code == 200, page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert "<script>" not in page.text and " style=" not in page.text
    # The API token still opens only the API: the console cookie is not a bearer.
    signed = f"{COOKIE}={client.cookies[COOKIE]}"
    async with httpx.AsyncClient(base_url=ctl.url, headers={"cookie": signed}) as cookie_only:
        assert (await cookie_only.get("/pool")).status_code == 401


async def test_only_the_api_token_may_end_and_only_with_the_forms_csrf(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(console_token=VIEWER_TOKEN)
    await ctl.wait_idle_pods(1)
    session = (await ctl.open("ada", "t1")).json()
    end = f"/console/sessions/{session['id']}/end"

    async def state() -> str:
        return str((await ctl.client.get(f"/sessions/{session['id']}")).json()["state"])

    async with sign_in(ctl.url, VIEWER_TOKEN) as viewer:
        page = await viewer.get(f"/console/sessions/{session['id']}")
        assert page.status_code == 200 and 'id="end-button"' not in page.text
        refused = await viewer.post(end, data={"csrf": csrf_of(page.text)})
        assert refused.status_code == 403 and "read-only" in refused.text
    assert await state() == "ready"

    async with sign_in(ctl.url, API_TOKEN) as operator:
        page = await operator.get(f"/console/sessions/{session['id']}")
        assert 'id="end-button"' in page.text
        csrf = csrf_of(page.text)
        assert (await operator.post(end, data={"x": "1"})).status_code == 403  # no CSRF
        assert (await operator.post(end, data={"csrf": "0" * 64})).status_code == 403
        foreign = await operator.post(
            end, data={"csrf": csrf}, headers={"origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        assert await state() == "ready"
        ended = await operator.post(end, data={"csrf": csrf}, headers={"origin": ctl.url})
        assert ended.status_code == 303
    assert await state() == "ended"
    assert (await ctl.client.get(f"/sessions/{session['id']}")).json()["end_reason"] == "deleted"


async def test_sandbox_console_false_turns_it_off(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(console=False)
    async with httpx.AsyncClient(base_url=ctl.url) as client:
        for path in ("/console", "/console/login", *PAGES, "/console/static/console.js"):
            assert (await client.get(path)).status_code == 404
    assert (await ctl.client.get("/pool")).status_code == 200  # the API is unchanged


async def test_a_standby_console_says_so_and_links_nowhere(
    start_controller: ControllerFactory, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    leader = await start_controller(database_url=database, state_dir=str(tmp_path / "a"))
    standby = await start_controller(database_url=database, state_dir=str(tmp_path / "b"))
    assert leader.controller.is_leader and not standby.controller.is_leader
    async with httpx.AsyncClient(base_url=standby.url) as client:
        for path in ("/console/login", *PAGES):
            page = await client.get(path)
            assert page.status_code == 503 and "standby" in page.text, path
            assert "<a " not in page.text and "<form" not in page.text
        # Signed in at the leader, the same cookie at the standby shows the standby.
    async with sign_in(leader.url, API_TOKEN) as operator:
        assert (await operator.get("/console/pool")).status_code == 200
