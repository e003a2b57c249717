"""The console's routes: pages (server-rendered), sign-in, the End action and the
live stream. Every answer carries a strict Content-Security-Policy."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ..controller import Controller
from ..errors import SandboxError
from ..model import SessionState
from ..scheduler.loop import Scheduler
from . import live, views
from .access import COOKIE, COOKIE_PATH, COOKIE_TTL, Access, Role, Visitor
from .hub import Hub

# No inline script or style, nothing from another origin, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a form POST says "Origin: null".
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
FRAGMENT = "x-console-fragment"  # asked by console.js: the live part of the page only
ROWS_DEFAULT, ROWS_MAX = 200, 5000
ENDS_SHOWN = 100
TEXT_MAX = 253
FRAGMENTS_KEPT = 32
PAGE_URL_MAX = 2048
SESSION_PAGE = "/console/sessions/"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def router(ctl: Controller, access: Access, hub: Hub, templates: jinja2.Environment) -> APIRouter:
    console = APIRouter(prefix="/console", include_in_schema=False)
    fragments: OrderedDict[tuple[str, Role, int], asyncio.Future[Response]] = OrderedDict()

    def html(template: str, code: int = 200, **context: Any) -> HTMLResponse:
        body = templates.get_template(template).render(**context)
        return HTMLResponse(body, status_code=code, headers=HEADERS)

    def refused(exc: Refused) -> HTMLResponse:
        return html("message.html", exc.status, title="Refused", message=exc.message)

    def visitor_of(request: Request) -> Visitor | None:
        return access.visitor(request.cookies.get(COOKIE), ctl.clock.now())

    def scheduler() -> Scheduler | None:
        s = ctl.scheduler
        return s if s is not None and s.running and ctl.store_available else None

    def standby() -> HTMLResponse:
        # A standby (or a leader without its store) has nothing true to show, and no
        # page of it leads anywhere: the Service sends operators to the leader.
        response = html("standby.html", 503)
        response.headers["Retry-After"] = "1"
        return response

    async def page(request: Request, name: str, build: Any) -> Response:
        """A signed-in page: the whole of it, or its live part for console.js. Every
        console open on a page asks for its live part after the same change: it is
        rendered once per change and role (it holds no CSRF token) and shared."""
        if request.headers.get(FRAGMENT) == "1":
            who = visitor_of(request)
            if who is not None and scheduler() is not None:
                key = (str(request.url), who.role, hub.version)
                shared = fragments.get(key)
                if shared is None:
                    shared = fragments[key] = asyncio.ensure_future(render(request, name, build))
                    while len(fragments) > FRAGMENTS_KEPT:
                        fragments.popitem(last=False)
                return await asyncio.shield(shared)
        return await render(request, name, build)

    async def render(request: Request, name: str, build: Any) -> Response:
        s = scheduler()
        if s is None:
            return standby()
        who = visitor_of(request)
        if who is None:
            return RedirectResponse("/console/login", status_code=303, headers=HEADERS)
        try:
            context = await build(s, request, who)
        except Refused as exc:
            return refused(exc)
        return html(
            name,
            who=who,
            version=hub.version,
            fragment=request.headers.get(FRAGMENT) == "1",
            now=ctl.clock.now(),
            views=views,
            path=request.url.path,
            **context,
        )

    # ------------------------------------------------------------ sign-in

    @console.get("")
    async def home() -> Response:
        return RedirectResponse("/console/pool", status_code=303, headers=HEADERS)

    @console.get("/login")
    async def login_form(request: Request) -> Response:
        if scheduler() is None:
            return standby()
        return html("login.html", error=None)

    @console.post("/login")
    async def login(request: Request) -> Response:
        if scheduler() is None:
            return standby()
        try:
            form = await _form(request)
        except Refused as exc:
            return refused(exc)
        role = access.role_for_token(form.get("token", ""))
        if role is None:
            return html("login.html", 401, error="That token is not valid here.")
        response = RedirectResponse("/console/pool", status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            access.cookie(role, ctl.clock.now()),
            max_age=COOKIE_TTL,
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            # Behind a TLS-terminating Ingress the request arrives as http; trusting the
            # header can only add the flag, never take it away.
            secure="https" in (request.url.scheme, request.headers.get("x-forwarded-proto")),
        )
        return response

    @console.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/console/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response

    # ------------------------------------------------------------ pages

    async def pool_page(s: Scheduler, request: Request, who: Visitor) -> dict[str, Any]:
        now = ctl.clock.now()
        status = s.snapshot(now)
        limits = status.limits
        waiters = [views.view_row(v, now, limits) for v in s.waiters()]
        total = sum(status.pods.values()) + status.creating
        return {
            "status": status,
            "total": total,
            "waiters": waiters,
            "chart": views.chart(list(hub.samples), limits.max_total_jobs),
            "pod_states": list(status.pods.items()),
        }

    async def sessions_page(s: Scheduler, request: Request, who: Visitor) -> dict[str, Any]:
        q = request.query_params
        user, text = _text(q.get("user")), _text(q.get("q"))
        state = q.get("state", "")
        if state not in ("", *views.STATE_FILTERS):
            raise Refused(400, "state: one of " + ", ".join(views.STATE_FILTERS))
        sort = q.get("sort", "age")
        if sort not in views.SORTS:
            raise Refused(400, "sort: one of " + ", ".join(views.SORTS))
        descending = q.get("order", "") == "desc"
        limit = _count(q.get("limit"), ROWS_DEFAULT, ROWS_MAX)
        rows, matched = views.sessions_table(
            s,
            ctl.clock.now(),
            ctl.settings.limits(),
            user=user,
            state=state,
            text=text,
            sort=sort,
            descending=descending,
            limit=limit,
        )
        return {
            "rows": rows,
            "matched": matched,
            "limit": limit,
            "filters": {"user": user, "state": state, "q": text, "sort": sort},
            "descending": descending,
            "states": views.STATE_FILTERS,
        }

    async def session_page(s: Scheduler, request: Request, who: Visitor) -> dict[str, Any]:
        session_id = request.path_params["session_id"]
        view = await s.view(session_id) if len(session_id) <= 64 else None
        if view is None:
            raise Refused(404, "No such session.")
        now = ctl.clock.now()
        return {
            "session": view.session,
            "row": views.view_row(view, now, ctl.settings.limits()),
            "history": list(hub.history.get(session_id, ())),
            "live": view.session.state is not SessionState.ENDED,
            "end_words": views.end_words(view.session),
        }

    async def users_page(s: Scheduler, request: Request, who: Visitor) -> dict[str, Any]:
        now = ctl.clock.now()
        limits = ctl.settings.limits()
        rows = s.read_sessions(lambda session, detail: views.row(session, detail, now, limits))
        return {"users": views.users(rows), "limit": limits.max_sessions_per_user}

    async def ends_page(s: Scheduler, request: Request, who: Visitor) -> dict[str, Any]:
        ended = await s.recent_ended(ENDS_SHOWN)
        return {"ended": [(e, views.end_words(e)) for e in ended]}

    async def pool_route(request: Request) -> Response:
        return await page(request, "pool.html", pool_page)

    async def sessions_route(request: Request) -> Response:
        return await page(request, "sessions.html", sessions_page)

    async def session_route(request: Request) -> Response:
        return await page(request, "session.html", session_page)

    async def users_route(request: Request) -> Response:
        return await page(request, "users.html", users_page)

    async def ends_route(request: Request) -> Response:
        return await page(request, "ends.html", ends_page)

    console.add_api_route("/pool", pool_route, methods=["GET"])
    console.add_api_route("/sessions", sessions_route, methods=["GET"])
    console.add_api_route("/sessions/{session_id}", session_route, methods=["GET"])
    console.add_api_route("/users", users_route, methods=["GET"])
    console.add_api_route("/ends", ends_route, methods=["GET"])

    # ------------------------------------------------------------ the one action

    @console.post("/sessions/{session_id}/end")
    async def end(request: Request, session_id: str) -> Response:
        who = visitor_of(request)
        try:
            if who is None:
                raise Refused(401, "Sign in first.")
            form = await _form(request)
            if not access.csrf_ok(who, form.get("csrf", "")):
                raise Refused(403, "This form is not one this console gave you.")
            if not who.may_act:
                raise Refused(403, "The read-only console token cannot end sessions.")
            s = scheduler()
            if s is None:
                return standby()
            try:
                await s.end_session(session_id, f"console:{who.role}")
            except SandboxError as exc:
                raise Refused(404, f"Could not end the session ({type(exc).__name__}).") from exc
        except Refused as exc:
            return refused(exc)
        return RedirectResponse(f"/console/sessions/{session_id}", status_code=303, headers=HEADERS)

    # ------------------------------------------------------------ live

    @console.get("/events")
    async def events(request: Request) -> Response:
        if visitor_of(request) is None:
            return refused(Refused(401, "Sign in first."))
        q = request.query_params
        since = _count(q.get("v"), hub.version, 2**62)
        followed = None
        if "page" in q:
            followed = page_followed(q["page"], request.cookies.get(COOKIE, ""))
            if followed is None:
                return refused(Refused(400, "page: a console page, as /console/sessions?..."))
        return StreamingResponse(
            live.stream(hub, since, followed),
            media_type="text/event-stream",
            headers={**HEADERS, "X-Accel-Buffering": "no"},
        )

    pages = {
        "/console/pool": ("pool.html", pool_page),
        "/console/sessions": ("sessions.html", sessions_page),
        "/console/users": ("users.html", users_page),
        "/console/ends": ("ends.html", ends_page),
    }
    frames: OrderedDict[tuple[str, Role, int], asyncio.Future[bytes]] = OrderedDict()

    def page_followed(url: str, cookie: str) -> live.Page | None:
        """What a stream opened for ``url`` sends: the page's live part, rendered once
        per change and role (it holds no CSRF token) and shared by every stream on it."""
        parts = urlsplit(url)
        if len(url) > PAGE_URL_MAX or parts.scheme or parts.netloc:
            return None
        path, session_id = parts.path, None
        if path in pages:
            name, build = pages[path]
        elif path.startswith(SESSION_PAGE) and "/" not in path[len(SESSION_PAGE) :]:
            name, build = "session.html", session_page
            session_id = unquote(path[len(SESSION_PAGE) :])
        else:
            return None
        key_url = f"{path}?{parts.query}"
        scope = {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "server": ("console", 80),
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": parts.query.encode(),
            "headers": [(b"cookie", f"{COOKIE}={cookie}".encode()), (FRAGMENT.encode(), b"1")],
            "path_params": {"session_id": session_id} if session_id is not None else {},
        }

        async def render_frame(version: int) -> bytes:
            response = await render(Request(scope), name, build)
            if response.status_code != 200:
                return live.RELOAD
            return live.frame(version, bytes(response.body).decode())

        async def frame() -> bytes:
            who = access.visitor(cookie, ctl.clock.now())
            if who is None or scheduler() is None:
                return live.RELOAD
            key = (key_url, who.role, hub.version)
            shared = frames.get(key)
            if shared is None:
                shared = frames[key] = asyncio.ensure_future(render_frame(hub.version))
                while len(frames) > FRAGMENTS_KEPT:
                    frames.popitem(last=False)
            return await asyncio.shield(shared)

        return live.Page(session_id, frame)

    return console


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's first values; another origin's POST is refused."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise Refused(403, "A form from another site is refused.")
    if request.headers.get("content-type", "").split(";")[0] != (
        "application/x-www-form-urlencoded"
    ):
        raise Refused(415, "Expected a form.")
    body = await request.body()
    try:
        fields = parse_qs(body.decode(), max_num_fields=8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, "Not a form this console sends.") from exc
    return {k: v[0] for k, v in fields.items() if v}


def _text(value: str | None) -> str:
    return (value or "").strip()[:TEXT_MAX]


def _count(value: str | None, default: int, top: int) -> int:
    try:
        n = int(value) if value else default
    except ValueError:
        return default
    return min(max(n, 0), top)


__all__ = ["Role", "router"]
