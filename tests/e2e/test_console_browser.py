"""The operator console in a real browser (Debian's chromium, driven by Playwright):
sign-in, live updates without a reload, End, a waiter at the cap, the read-only token,
and that nothing leaves the controller's origin. With SANDBOX_CONSOLE_SCREENSHOTS=DIR
it also saves a screenshot of each page there (the README's come from docs/console)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..conftest import API_TOKEN, ControllerFactory
from ..eventually import eventually

VIEWER_TOKEN = "console-viewer-token"
SHOTS = os.environ.get("SANDBOX_CONSOLE_SCREENSHOTS")


async def shoot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def signed_in(chromium: Any, base: str, token: str) -> tuple[Any, list[str], list[str]]:
    """A new browser context signed in with ``token``; its console errors and the
    URLs it requested are collected."""
    context = await chromium.new_context(viewport={"width": 1280, "height": 760})
    page = await context.new_page()
    errors: list[str] = []
    requested: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requested.append(r.url))
    await page.goto(f"{base}/console/sessions")
    assert urlsplit(page.url).path == "/console/login"
    await page.fill("#token", token)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert page.url == f"{base}/console/pool", (page.url, errors, await page.content())
    return page, errors, requested


async def test_the_console_follows_the_pool_live_and_ends_sessions(
    start_controller: ControllerFactory,
    browser: Any,
) -> None:
    ctl = await start_controller(prewarm_pool_size=1, max_total_jobs=2, console_token=VIEWER_TOKEN)
    base = ctl.url
    await ctl.wait_idle_pods(1)
    page, errors, requested = await signed_in(browser, base, API_TOKEN)

    # A session opened through the API appears on the open sessions page, no reload.
    await page.goto(f"{base}/console/sessions")
    await page.evaluate("window.notReloaded = true")
    first = (await ctl.open("ada", "thread-1")).json()
    opened_at = time.monotonic()
    await page.wait_for_selector(f'tr[data-session="{first["id"]}"]', timeout=5000)
    appeared_after = time.monotonic() - opened_at
    assert appeared_after < 1.0, f"the session appeared after {appeared_after:.2f}s"
    assert await page.evaluate("window.notReloaded === true")

    # At the cap (2 pods), a third session waits; the pool page shows it and why.
    await ctl.wait_idle_pods(1)
    second = (await ctl.open("bea", "thread-2", wait=5)).json()
    assert second["state"] == "ready"
    await page.goto(f"{base}/console/pool")
    waiting = asyncio.create_task(ctl.open("cy", "thread-3", wait=30))
    waiter = page.locator("#waiters tr[data-session]")
    await waiter.first.wait_for(timeout=5000)
    assert "maxTotalJobs (2)" in await waiter.first.inner_text()
    assert await page.inner_text("td[data-state=assigned]") == "2"
    await shoot(page, "pool")

    # End (after the confirmation) ends the session; the waiter gets its pod.
    await page.goto(f"{base}/console/sessions/{first['id']}")
    await shoot(page, "session")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#end-button")
    await page.wait_for_function(
        "document.getElementById('session-state').textContent.includes('ended')"
    )
    assert "deleted" in await page.inner_text("#session-state")
    third = await asyncio.wait_for(waiting, 30)
    assert third.status_code == 201 and third.json()["state"] == "ready"
    await page.goto(f"{base}/console/pool")
    await page.wait_for_function("!document.querySelector('#waiters tr[data-session]')")
    ended = (await ctl.client.get(f"/sessions/{first['id']}")).json()
    assert ended["end_reason"] == "deleted"

    await page.goto(f"{base}/console/sessions")
    await shoot(page, "sessions")
    await page.goto(f"{base}/console/users")
    await page.wait_for_selector('tr[data-user="bea"]')
    await shoot(page, "users")
    await page.goto(f"{base}/console/ends")
    await page.wait_for_selector(f'tr[data-session="{first["id"]}"]')
    await shoot(page, "ends")

    assert errors == []
    assert {urlsplit(u).netloc for u in requested} == {urlsplit(base).netloc}

    # The read-only token looks but cannot end: no End button, and a POST is refused.
    viewer, viewer_errors, viewer_requested = await signed_in(browser, base, VIEWER_TOKEN)
    await viewer.goto(f"{base}/console/sessions/{second['id']}")
    assert await viewer.locator("#end-button").count() == 0
    assert viewer_errors == []
    assert {urlsplit(u).netloc for u in viewer_requested} == {urlsplit(base).netloc}
    status = await viewer.evaluate(
        """id => fetch('/console/sessions/' + id + '/end', {
            method: 'POST',
            headers: {'content-type': 'application/x-www-form-urlencoded'},
            body: 'csrf=' + document.querySelector('meta[name=csrf]').content,
        }).then(r => r.status)""",
        second["id"],
    )
    assert status == 403

    async def still_live() -> bool:
        body = (await ctl.client.get(f"/sessions/{second['id']}")).json()
        return bool(body["state"] == "ready")

    await eventually(still_live, within=2, what="the session to stay live")
