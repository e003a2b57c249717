"""Wake on traffic: a request (or WebSocket upgrade) for a suspended session asks the
controller to resume it and is held until the sandbox is ready, for up to
SANDBOX_PROXY_RESUME_WAIT; then 503 with Retry-After.

A burst of requests for one suspended session makes one resume (single flight): the
first starts a wake, the rest wait on it. The wake asks ``POST
/internal/sessions/{id}/resume`` and then re-reads the route until it is served. A
refusal of the resume (429 at the per-user limit, 503 at the cap or ``restore_failed``)
is passed on to every waiter as the controller gave it, Retry-After included.

A browser navigation is not held that long: after ``NAVIGATION_PATIENCE`` it gets a
small page that reloads itself (``StillWaking``), so the tab shows why it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import quote

import httpx
from starlette.types import Scope

from sandbox_controller.clock import Clock

from .errors import ProxyError, controller_unavailable, ended, not_found, resume_timeout
from .metrics import ProxyMetrics
from .routes import RouteCache

log = logging.getLogger(__name__)

# Route answers that mean "not yet": keep waiting. controller_unavailable is a leader
# failover, which a resume outlives.
_NOT_YET = frozenset({"session_suspended", "session_provisioning", "controller_unavailable"})
# Resume refusals that are the controller's own trouble, not the session's: asked again.
_RETRIED = frozenset({"not_leader", "store_unavailable", "internal_error"})


class StillWaking(Exception):
    """A navigation has waited its patience and the session is still resuming."""


class Waker:
    # How often the route is re-read while a session resumes: a resume takes a second or
    # more (claim a pod, stream the archive), so a quarter second adds little to it.
    POLL_SECONDS = 0.25
    # A session seen suspended again while waking (a restore that failed leaves it so)
    # is asked to resume again this often: the answer tells the waiters why it failed.
    RESUME_AGAIN_SECONDS = 5.0
    # How long a top-level navigation is held before it gets the self-refreshing page.
    NAVIGATION_PATIENCE = 2.0

    def __init__(
        self,
        client: httpx.AsyncClient,
        controller_url: str,
        credential: str | None,
        routes: RouteCache,
        clock: Clock,
        wait: float,
        metrics: ProxyMetrics,
    ) -> None:
        self._client = client
        self._base = controller_url.rstrip("/") + "/internal/sessions/"
        self._headers = {"authorization": f"Bearer {credential}"} if credential else {}
        self._routes = routes
        self._clock = clock
        self._wait = wait
        self._metrics = metrics
        self._wakes: dict[str, asyncio.Task[str]] = {}

    async def address(self, session_id: str, *, navigation: bool = False) -> str:
        """The pod address of the session, woken first if it is suspended. ProxyError as
        RouteCache.address gives, or the resume's refusal, or 503 ``resume_timeout``;
        StillWaking for a navigation that has waited ``NAVIGATION_PATIENCE``."""
        try:
            return await self._routes.address(session_id)
        except ProxyError as err:
            if err.code != "session_suspended":
                raise
        task = self._wakes.get(session_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._wake(session_id), name=f"proxy:wake:{session_id[:32]}"
            )
            self._wakes[session_id] = task
            task.add_done_callback(lambda t: self._finished(session_id, t))
        if navigation and self.NAVIGATION_PATIENCE < self._wait:
            return await self._hold(task, self.NAVIGATION_PATIENCE)
        # Shielded: one client leaving must not cancel the wake for the rest. The wake
        # itself gives up at the resume wait.
        return await asyncio.shield(task)

    async def elsewhere(
        self, session_id: str, address: str, error: ProxyError, navigation: bool = False
    ) -> str:
        """The session's pod now, for a request its pod at ``address`` left untouched
        (being suspended, or gone): the route asked again, the session woken first if
        it is suspended. ``error`` if that is the same address (a pod that died rather
        than moved: the controller has not seen it yet)."""
        self._routes.invalidate(session_id)
        moved = await self.address(session_id, navigation=navigation)
        if moved == address:
            raise error
        return moved

    async def _hold(self, task: asyncio.Task[str], seconds: float) -> str:
        """The wake's answer, or StillWaking once ``seconds`` of the clock have passed."""
        timer = asyncio.get_running_loop().create_task(self._clock.sleep(seconds))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if task.done():
            return task.result()
        raise StillWaking()

    def _finished(self, session_id: str, task: asyncio.Task[str]) -> None:
        if self._wakes.get(session_id) is task:
            del self._wakes[session_id]
        if task.cancelled():
            return
        err = task.exception()
        outcome = "ready" if err is None else getattr(err, "code", "error")
        self._metrics.wake(outcome)

    async def _wake(self, session_id: str) -> str:
        deadline = self._clock.monotonic() + self._wait
        await self._resume(session_id, deadline)
        asked_at = self._clock.monotonic()
        while True:
            self._routes.invalidate(session_id)  # a fresh answer each time round
            try:
                return await self._routes.address(session_id)
            except ProxyError as err:
                if err.code not in _NOT_YET:
                    raise
                again = err.code == "session_suspended"
            now = self._clock.monotonic()
            if now >= deadline:
                raise resume_timeout(self._wait)
            if again and now - asked_at >= self.RESUME_AGAIN_SECONDS:
                await self._resume(session_id, deadline)
                asked_at = self._clock.monotonic()
            await self._clock.sleep(min(self.POLL_SECONDS, deadline - now))

    async def _resume(self, session_id: str, deadline: float) -> None:
        """Ask the controller to resume the session (idempotent). Returns once it has
        taken the request; raises its refusal; retries its own trouble until
        ``deadline``."""
        url = self._base + quote(session_id, safe="") + "/resume"
        while True:
            error = await self._ask_resume(url, session_id)
            if error is None:
                return
            if error.code not in _RETRIED and error.code != "controller_unavailable":
                raise error
            now = self._clock.monotonic()
            if now >= deadline:
                raise resume_timeout(self._wait)
            await self._clock.sleep(min(self.POLL_SECONDS, deadline - now))

    async def _ask_resume(self, url: str, session_id: str) -> ProxyError | None:
        try:
            resp = await self._client.post(url, headers=self._headers)
        except httpx.HTTPError as exc:
            log.warning("resume of %s: controller unreachable: %s", session_id, exc)
            return controller_unavailable()
        if resp.status_code < 300:
            return None
        code, message = _error_of(resp)
        if resp.status_code == 404:
            return not_found()
        if resp.status_code == 410:
            return ended()
        if resp.status_code == 409:
            return None  # not suspended any more (already resumed): the route will say
        if resp.status_code in (429, 503) and code:
            retry_after = _retry_after(resp)
            return ProxyError(resp.status_code, code, message, retry_after)
        log.warning("resume of %s: controller said %s", session_id, resp.status_code)
        return controller_unavailable()


def _error_of(resp: httpx.Response) -> tuple[str, str]:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        error = resp.json()["error"]
        code, message = error["code"], error.get("message", "")
        if isinstance(code, str) and isinstance(message, str):
            return code, message
    return "", ""


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86400 else None


def is_navigation(scope: Scope) -> bool:
    """A browser loading a page in a tab (not a fetch, not an API client): worth a page
    that says what it waits for rather than a long blank wait."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    mode = accept = b""
    for name, value in scope["headers"]:
        if name == b"sec-fetch-mode":
            mode = value
        elif name == b"accept":
            accept = value
    return mode == b"navigate" and b"text/html" in accept


_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>Waking your sandbox</title></head>
<body style="font-family:sans-serif;margin:3em">
<h1>Waking your sandbox&hellip;</h1>
<p>It was suspended while idle and is being restored with your files.
This page reloads by itself.</p>
</body></html>
"""


def waking_page() -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of the page a waiting navigation gets (503, so no cache keeps
    it; ``Refresh`` and the meta tag reload it without script)."""
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", b"%d" % len(_PAGE)),
        (b"refresh", b"2"),
        (b"retry-after", b"2"),
        (b"cache-control", b"no-store"),
    ]
    return headers, _PAGE
