"""The proxy's ASGI entry: raw ASGI dispatch, with errors mapped to responses here only.

Forwarding never goes through a framework: per request it is a host or path check, an
HMAC check, a dict lookup for the route and the upstream exchange. Anything else
(probes, metrics, the OpenAPI document) goes to the small FastAPI app in admin.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence

import httpx
from starlette.types import Message, Receive, Scope, Send

from sandbox_controller.aiotasks import TaskGroup
from sandbox_controller.clock import Clock, SystemClock
from sandbox_controller.config import ConfigError, Settings
from sandbox_controller.serving import KEEP_ALIVE_SECONDS
from sandbox_controller.tokens import TokenClaims, public_key, token_key_id

from .access import access_log, log_access
from .activity import ActivityReporter
from .admin import build_admin
from .auth import (
    SAFE_METHODS,
    Carrier,
    Credentials,
    Verifier,
    authenticate,
    check_origin,
    find_credentials,
    origin_of,
    same_host_location,
    session_cookie,
    strip_cookie,
    strip_query_token,
)
from .errors import ProxyError, sandbox_suspending, unreachable, upstream_timeout
from .forward import ClientGone, Exchange, Suspending, request_head
from .metrics import ProxyMetrics
from .paths import Target, host_target, parse_target
from .routes import RouteCache
from .tokenkeys import TokenKeyFetcher
from .upstream import BadHead, DialError, DialTimeout, HeadLimits, UpstreamError, UpstreamPool
from .wake import StillWaking, Waker, is_navigation, waking_page
from .websocket import Relay, upstream_headers

log = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

_JSON = (b"content-type", b"application/json")
_NOT_FOUND = ProxyError(404, "not_found", "only /s/{session_id}/... is proxied")


class Redirect(Exception):
    """A ``?token=`` navigation: answer 303 to ``location`` with the session cookie."""

    def __init__(self, location: bytes, cookie: Header) -> None:
        self.location = location
        self.cookie = cookie


def _strip_auth(name: bytes, value: bytes) -> bytes | None:
    """Header value to forward with the proxy's own credentials removed (None: drop)."""
    if name == b"authorization":
        # Any bearer is taken to be ours: the session token travels this way.
        return None if value[:7].lower() == b"bearer " else value
    if name == b"cookie":
        return strip_cookie(value) or None
    return value


def controller_credential(settings: Settings) -> str | None:
    """The proxy's bearer token for the controller's /internal/* calls: its own
    credential, else (configured the old way) the API token."""
    return settings.proxy_token or settings.api_token


class ProxyApp:
    """``verify_keys``: the token verify keys, given (``dev``, where the controller is in
    the same process); else derived from SANDBOX_TOKEN_SECRET if it is set (the old
    way, warned about), else asked of the controller (tokenkeys.py)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        connect_timeout: float = 5.0,
        verify_keys: Sequence[str] = (),
    ) -> None:
        if not (verify_keys or settings.token_secret or settings.proxy_token):
            raise ConfigError(
                "SANDBOX_PROXY_TOKEN: the proxy needs it to ask the controller for routes "
                "and the token verify key"
            )
        if settings.token_secret:
            log.warning(
                "SANDBOX_TOKEN_SECRET is set for the proxy: with it the proxy can sign "
                "session tokens and derive every sandbox's claim secret. Give the proxy "
                "SANDBOX_PROXY_TOKEN only (README: Configuration)"
            )
            verify_keys = verify_keys or [public_key(settings.token_secret.encode())]
        if settings.api_token:
            log.warning(
                "SANDBOX_API_TOKEN is set for the proxy: it opens the whole controller API; "
                "give the proxy SANDBOX_PROXY_TOKEN instead"
            )
        self.settings = settings
        self.verifier = Verifier(verify_keys)
        self.clock: Clock = clock or SystemClock()
        self.connect_timeout = connect_timeout
        domain = settings.proxy_session_domain
        self.session_domain = domain.encode() if domain else None
        self.allowed_origins = settings.allowed_origins
        self.public_https = settings.proxy_url.startswith("https://")
        self.metrics = ProxyMetrics()
        self.admin = build_admin(
            self.metrics, lambda: self.started and not self.draining and self.verifier.ready
        )
        self.draining = False
        self.started = False
        self._relays: set[Relay] = set()
        self._relays_done = asyncio.Event()
        self._tasks = TaskGroup("proxy")
        self._client: httpx.AsyncClient | None = None
        # A response head is held to what a request head may be (size and time).
        head = HeadLimits(settings.max_header_bytes, settings.header_read_timeout)
        self.pool = UpstreamPool(connect_timeout, head=head)
        self.routes: RouteCache
        self.waker: Waker
        self._keys: TokenKeyFetcher | None = None
        self.activity: ActivityReporter

    # lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        s = self.settings
        # trust_env off: the controller is an internal address, never behind HTTP(S)_PROXY.
        # Idle connections are dropped well before the controller would close them
        # (serving.KEEP_ALIVE_SECONDS), so a lookup never lands on one being closed.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, connect=self.connect_timeout),
            limits=httpx.Limits(keepalive_expiry=KEEP_ALIVE_SECONDS / 2),
            trust_env=False,
        )
        credential = controller_credential(s)
        self.routes = RouteCache(
            self._client, s.controller_url, credential, self.clock, self.metrics
        )
        self.waker = Waker(
            self._client,
            s.controller_url,
            credential,
            self.routes,
            self.clock,
            s.proxy_resume_wait,
            self.metrics,
        )
        self.activity = ActivityReporter(
            self._client,
            s.controller_url,
            credential,
            s.activity_flush_interval,
            self.clock,
            self.metrics,
        )
        self._tasks.start(self.activity.run(), "activity")
        if not self.verifier.ready:
            keys = TokenKeyFetcher(
                self._client, s.controller_url, credential, self.verifier, self.clock
            )
            # One short try now, so a proxy beside a running controller is ready at once;
            # until one succeeds, tokens get 503 and /readyz says not ready.
            await keys.fetch(deadline=2.0)
            self._tasks.start(keys.run(), "token-keys")
            self._keys = keys
        self.started = True

    async def close_websockets(self, wait: float = 5.0) -> None:
        """Drain: refuse new upgrades, close open relays with 1001 and wait for them."""
        self.draining = True
        for relay in list(self._relays):
            relay.shutdown()
        if self._relays:
            try:
                await asyncio.wait_for(self._relays_done.wait(), wait)
            except TimeoutError:
                log.warning("%d WebSocket relays did not close in time", len(self._relays))

    async def aclose(self) -> None:
        self.draining = True
        await self._tasks.stop()
        if self.started:
            await self.activity.flush()  # the last batch: traffic up to the very end counts
        self.pool.close()
        if self._client is not None:
            await self._client.aclose()
        self.started = False

    # ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        # No lifespan: ProxyProcess calls startup() and aclose() itself, in order.

    def _target(self, scope: Scope) -> tuple[Target, bytes] | None:
        """The session a request is for and the prefix the sandbox is served under;
        None for the proxy's own endpoints. ProxyError(400) for an unsafe path."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        if self.session_domain is None:
            target = parse_target(raw)
            return None if target is None else (target, b"/s/" + raw[3:].split(b"/", 1)[0])
        for name, value in scope["headers"]:
            if name == b"host":
                target = host_target(value, self.session_domain, raw)
                return None if target is None else (target, b"")
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        session_id = "-"
        sent = 0
        try:
            found = self._target(scope)
            if found is None:
                await self.admin(scope, receive, send)
                return
            target, prefix = found
            session_id = target.session_id
            status, sent = await self._forward(scope, receive, send, target, prefix)
        except Redirect as redirect:
            status = 303
            headers = [(b"location", redirect.location), redirect.cookie, (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        except ProxyError as err:
            status = err.status
            sent = await _send_error(send, err)
        except StillWaking:
            status = 503
            headers, page = waking_page()
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": page})
            sent = len(page)
        self.metrics.request(status)
        if access_log.isEnabledFor(logging.INFO):
            log_access(scope, session_id, status, sent, time.perf_counter() - started)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, target: Target, prefix: bytes
    ) -> tuple[int, int]:
        session_id = target.session_id
        cached = self.routes.cached(session_id)  # the route before this request asks
        cookie, address = await self._admit(scope, target)
        query = strip_query_token(scope["query_string"])
        path = target.upstream_path + b"?" + query if query else target.upstream_path
        head, length, chunked = request_head(scope, path, address, prefix, _strip_auth)
        activity = self.activity

        def mark() -> None:
            activity.mark(session_id)

        exchange = Exchange(scope, receive, send, self.pool, mark)
        for again in (False, True):
            try:
                status = await exchange.run(address, head, length, chunked, cookie)
                break
            except DialTimeout:
                self._forget(session_id, address)
                raise upstream_timeout() from None
            except (Suspending, DialError) as exc:
                # Left untouched by a pod being suspended, or not reached through a
                # cached route (a pod gone): sent once more, where the controller now
                # says (wake.py ``elsewhere``); never a success that might be lost.
                log.info("sandbox %s for session %s: %s", address, session_id, exc)
                fresh = self.routes.cached(session_id) is not cached  # asked just now
                self._forget(session_id, address)
                if isinstance(exc, Suspending):
                    error, last = sandbox_suspending(), not exc.replayable
                else:
                    error, last = unreachable(), fresh
                if again or last:
                    raise error from None
                nav = is_navigation(scope)
                address = await self.waker.elsewhere(session_id, address, error, nav)
                head, length, chunked = request_head(scope, path, address, prefix, _strip_auth)
            except UpstreamError as exc:
                log.info("sandbox %s for session %s: %s", address, session_id, exc)
                self._forget(session_id, address)
                raise exc.error if isinstance(exc, BadHead) else unreachable() from None
            except ClientGone:
                return 499, 0  # nginx's code for "client closed request"; nothing was sent
        self.metrics.upstream_seconds.observe(exchange.upstream_seconds)
        return status, exchange.sent_bytes

    async def _admit(self, scope: Scope, target: Target) -> tuple[list[Header], str]:
        """Auth, then route. Auth first: only a valid token makes the proxy ask the controller.
        Returns the pod's address and the headers to add to the answer: a token that
        came in the query becomes the session cookie, for the requests that follow.
        A GET/HEAD navigation with ``?token=`` is sent back (Redirect) without it, so the
        token leaves the address bar, the history and later Referer headers."""
        headers = scope["headers"]
        creds = find_credentials(headers, scope["query_string"])
        await self._learn_keys(creds)
        claims = authenticate(self.verifier, creds, target.session_id, self.clock.now())
        websocket = scope["type"] == "websocket"
        if creds.token is None:
            # Cookie-authenticated: only a header or query token is proof of intent. A
            # foreign Origin is refused on any method; a navigation (a link, the editor's
            # iframe) carries none, and is let through for the methods that change nothing.
            origin = origin_of(headers)
            if origin is not None or websocket or scope["method"] not in SAFE_METHODS:
                check_origin(origin, self._own_origin(scope), self.allowed_origins)
        if creds.carrier is not Carrier.QUERY or creds.token is None:
            return [], await self._address(scope, target.session_id)
        cookie = self._cookie(scope, creds.token, claims)
        if not websocket and scope["method"] in ("GET", "HEAD"):
            raw: bytes = scope.get("raw_path") or scope["path"].encode()
            query = strip_query_token(scope["query_string"])
            raise Redirect(same_host_location(raw, query), cookie)
        return [cookie], await self._address(scope, target.session_id)

    async def _address(self, scope: Scope, session_id: str) -> str:
        """The session's pod, woken first if it is suspended (wake.py)."""
        return await self.waker.address(session_id, navigation=is_navigation(scope))

    def _secure(self, scope: Scope) -> bool:
        return (
            self.public_https
            or scope.get("scheme") in ("https", "wss")
            or (b"x-forwarded-proto", b"https") in scope["headers"]
        )

    def _own_origin(self, scope: Scope) -> str:
        """The origin the browser is on when a page of this session (or, in path mode, of
        any session: one shared origin) calls back: the proxy as the client reached it."""
        host = next((v for n, v in scope["headers"] if n == b"host"), b"")
        scheme = "https" if self._secure(scope) else "http"
        return f"{scheme}://{host.decode('latin-1').lower()}"

    def _forget(self, session_id: str, address: str) -> None:
        # A failed pod is re-resolved on the next request: the controller may have moved
        # the session, and its answer (not ours) decides where traffic goes.
        self.routes.invalidate(session_id)
        self.pool.drop(address)

    async def _learn_keys(self, creds: Credentials) -> None:
        """A token signed by a key this proxy has not learnt yet (the controller's secret
        rotated since the last refresh): ask the controller for its keys first."""
        if self._keys is None or not self.verifier.ready:
            return
        for token in [creds.token] if creds.token is not None else creds.cookies:
            kid = token_key_id(token)
            if kid is not None and not self.verifier.knows(kid):
                await self._keys.learn(kid)
                return

    def _cookie(self, scope: Scope, token: str, claims: TokenClaims) -> Header:
        now = self.clock.now()
        cookie = session_cookie(
            claims.session_id,
            token,
            claims.expires_at,
            now,
            self._secure(scope),
            host_only=self.session_domain is not None,
        )
        return (b"set-cookie", cookie)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        message: Message = await receive()
        if message["type"] != "websocket.connect":
            return
        session_id = "-"
        try:
            found = self._target(scope)
            if found is None:
                raise _NOT_FOUND
            target, prefix = found
            session_id = target.session_id
            if self.draining:
                raise ProxyError(503, "draining", "the proxy is shutting down")
            cookie, address = await self._admit(scope, target)
            query = strip_query_token(scope["query_string"])
            path = target.upstream_path.decode("latin-1")
            activity = self.activity

            def mark() -> None:
                activity.mark(session_id)

            for again in (False, True):
                relay = Relay(mark)
                try:
                    await relay.dial(
                        address,
                        path + "?" + query.decode("latin-1") if query else path,
                        # Built in the call: the request head is not kept for the relay's life.
                        upstream_headers(scope, prefix.decode("latin-1"), _strip_auth),
                        scope.get("subprotocols", []),
                        self.connect_timeout,
                    )
                    break
                except ProxyError as err:
                    moved = err.code in ("sandbox_suspending", "sandbox_unreachable")
                    if err.status in (502, 504) or moved:
                        self._forget(target.session_id, address)
                    if again or not moved:
                        raise
                    # Nothing went through: dialled once more, as for HTTP.
                    address = await self.waker.elsewhere(target.session_id, address, err)
        except ProxyError as err:
            self.metrics.request(err.status)
            log.info(
                "refused a WebSocket upgrade for session %s: %d %s",
                session_id,
                err.status,
                err.code,
            )
            await _deny(scope, send, err)
            return
        try:
            accept = {"type": "websocket.accept", "subprotocol": relay.subprotocol}
            await send({**accept, "headers": cookie})
            relay.join(send)  # at once: from here bytes pass socket to socket
        except BaseException:
            relay.abort()
            raise
        # The request head is not needed past the hand-off (the access log takes the path);
        # a relay lives for hours, and thousands of them are open at once.
        scope["headers"] = []
        self.metrics.request(101)
        self._relays.add(relay)
        self._relays_done.clear()
        self.metrics.websockets_open.inc()
        try:
            await relay.run()
        finally:
            self.metrics.websockets_open.dec()
            self._relays.discard(relay)
            if not self._relays:
                self._relays_done.set()
            if access_log.isEnabledFor(logging.INFO):
                duration = time.perf_counter() - started
                log_access(scope, session_id, 101, relay.bytes_relayed, duration)


def _retry_after(err: ProxyError) -> list[Header]:
    if err.retry_after is not None:
        return [(b"retry-after", b"%d" % max(1, math.ceil(err.retry_after)))]
    return [(b"retry-after", b"1")] if err.status == 503 else []


async def _send_error(send: Send, err: ProxyError) -> int:
    body = err.body()
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    if err.status == 401:
        # A client without a token keeps no connection open.
        headers += [(b"www-authenticate", b"Bearer"), (b"connection", b"close")]
    headers += _retry_after(err)
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return len(body)


async def _deny(scope: Scope, send: Send, err: ProxyError) -> None:
    """Refuse an upgrade with a real HTTP status where the server allows it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = err.body()
        headers = [_JSON, (b"content-length", b"%d" % len(body)), *_retry_after(err)]
        await send(
            {"type": "websocket.http.response.start", "status": err.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if err.status < 500 else 1011})
