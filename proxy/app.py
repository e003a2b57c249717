"""The proxy's ASGI entry: raw ASGI dispatch, with errors mapped to responses here only.

Forwarding never goes through a framework: per request it is a path check, an HMAC
check, a dict lookup for the route and the upstream exchange. The three admin endpoints
are small enough to answer inline too.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from starlette.types import Message, Receive, Scope, Send

from sandbox_controller.aiotasks import TaskGroup
from sandbox_controller.clock import Clock, SystemClock
from sandbox_controller.config import ConfigError, Settings
from sandbox_controller.serving import KEEP_ALIVE_SECONDS
from sandbox_controller.tokens import TokenClaims

from .activity import ActivityReporter
from .auth import (
    Carrier,
    authenticate,
    find_credentials,
    session_cookie,
    strip_cookie,
    strip_query_token,
)
from .errors import ProxyError, unreachable, upstream_timeout
from .forward import ClientGone, Exchange, request_head
from .metrics import ProxyMetrics
from .paths import Target, parse_target
from .routes import RouteCache
from .upstream import DialTimeout, UpstreamError, UpstreamPool
from .websocket import Relay, dial, upstream_headers

log = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

_JSON = (b"content-type", b"application/json")
_NOT_FOUND = ProxyError(404, "not_found", "only /s/{session_id}/... is proxied")


def _strip_auth(name: bytes, value: bytes) -> bytes | None:
    """Header value to forward with the proxy's own credentials removed (None: drop)."""
    if name == b"authorization":
        # Any bearer is taken to be ours: the session token travels this way.
        return None if value[:7].lower() == b"bearer " else value
    if name == b"cookie":
        return strip_cookie(value) or None
    return value


class ProxyApp:
    def __init__(
        self, settings: Settings, *, clock: Clock | None = None, connect_timeout: float = 5.0
    ) -> None:
        if not settings.token_secret:
            raise ConfigError("SANDBOX_TOKEN_SECRET: the proxy needs it to verify tokens")
        self.settings = settings
        self.secret = settings.token_secret.encode()
        self.clock: Clock = clock or SystemClock()
        self.connect_timeout = connect_timeout
        self.metrics = ProxyMetrics()
        self.draining = False
        self.started = False
        self._relays: set[Relay] = set()
        self._relays_done = asyncio.Event()
        self._tasks = TaskGroup("proxy")
        self._client: httpx.AsyncClient | None = None
        self.pool = UpstreamPool(connect_timeout)
        self.routes: RouteCache
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
        self.routes = RouteCache(
            self._client, s.controller_url, s.api_token, self.clock, self.metrics
        )
        self.activity = ActivityReporter(
            self._client,
            s.controller_url,
            s.api_token,
            s.activity_flush_interval,
            self.clock,
            self.metrics,
        )
        self._tasks.start(self.activity.run(), "activity")
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

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        try:
            target = parse_target(raw)
            if target is None:
                await self._admin(scope["path"], send)
                return
            status = await self._forward(scope, receive, send, target, raw)
        except ProxyError as err:
            status = err.status
            await _send_error(send, err)
        self.metrics.request(status)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, target: Target, raw: bytes
    ) -> int:
        cookie, address = await self._admit(scope, target)
        query = strip_query_token(scope["query_string"])
        path = target.upstream_path + b"?" + query if query else target.upstream_path
        prefix = b"/s/" + raw[3:].split(b"/", 1)[0]
        head, length, chunked = request_head(scope, path, address, prefix, _strip_auth)
        session_id = target.session_id
        activity = self.activity

        def mark() -> None:
            activity.mark(session_id)

        exchange = Exchange(scope, receive, send, self.pool, mark)
        try:
            status = await exchange.run(address, head, length, chunked, cookie)
        except DialTimeout:
            self._forget(session_id, address)
            raise upstream_timeout() from None
        except UpstreamError as exc:
            log.info("sandbox %s for session %s: %s", address, session_id, exc)
            self._forget(session_id, address)
            raise unreachable() from None
        except ClientGone:
            return 499  # nginx's code for "client closed request"; nothing was sent
        self.metrics.upstream_seconds.observe(exchange.upstream_seconds)
        return status

    async def _admit(self, scope: Scope, target: Target) -> tuple[list[Header], str]:
        """Auth, then route. Auth first: only a valid token makes the proxy ask the controller.
        Returns the pod's address and the headers to add to the answer: a token that
        came in the query becomes the session cookie, for the requests that follow."""
        creds = find_credentials(scope["headers"], scope["query_string"])
        claims = authenticate(self.secret, creds, target.session_id, self.clock.now())
        address = await self.routes.address(target.session_id)
        if creds.carrier is not Carrier.QUERY or creds.token is None:
            return [], address
        return [self._cookie(scope, creds.token, claims)], address

    def _forget(self, session_id: str, address: str) -> None:
        # A failed pod is re-resolved on the next request: the controller may have moved
        # the session, and its answer (not ours) decides where traffic goes.
        self.routes.invalidate(session_id)
        self.pool.drop(address)

    def _cookie(self, scope: Scope, token: str, claims: TokenClaims) -> Header:
        secure = (
            scope.get("scheme") in ("https", "wss")
            or (b"x-forwarded-proto", b"https") in scope["headers"]
        )
        now = self.clock.now()
        cookie = session_cookie(claims.session_id, token, claims.expires_at, now, secure)
        return (b"set-cookie", cookie)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw: bytes = scope.get("raw_path") or scope["path"].encode()
        relay: Relay | None = None
        message: Message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            target = parse_target(raw)
            if target is None:
                raise _NOT_FOUND
            if self.draining:
                raise ProxyError(503, "draining", "the proxy is shutting down")
            cookie, address = await self._admit(scope, target)
            query = strip_query_token(scope["query_string"])
            path = target.upstream_path.decode("latin-1")
            prefix = "/s/" + raw[3:].split(b"/", 1)[0].decode("latin-1")
            headers = upstream_headers(scope, prefix, _strip_auth)
            try:
                pod = await dial(
                    address,
                    path + "?" + query.decode("latin-1") if query else path,
                    headers,
                    scope.get("subprotocols", []),
                    self.connect_timeout,
                )
            except ProxyError as err:
                if err.status in (502, 504):
                    self._forget(target.session_id, address)
                raise
            session_id = target.session_id
            activity = self.activity

            def mark() -> None:
                activity.mark(session_id)

            await send(
                {
                    "type": "websocket.accept",
                    "subprotocol": pod.subprotocol,
                    "headers": cookie,
                }
            )
        except ProxyError as err:
            self.metrics.request(err.status)
            await _deny(scope, send, err)
            return
        self.metrics.request(101)
        relay = Relay(receive, send, pod, mark)
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

    async def _admin(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await _send(send, 200, b"ok", b"text/plain")
        elif path == "/readyz":
            ok = self.started and not self.draining
            await _send(send, 200 if ok else 503, b"ready" if ok else b"not ready", b"text/plain")
        elif path == "/metrics":
            body, content_type = self.metrics.render()
            await _send(send, 200, body, content_type.encode())
        else:
            raise _NOT_FOUND


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, err: ProxyError) -> None:
    body = err.body()
    headers = [_JSON, (b"content-length", b"%d" % len(body))]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _deny(scope: Scope, send: Send, err: ProxyError) -> None:
    """Refuse an upgrade with a real HTTP status where the server allows it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = err.body()
        headers = [_JSON, (b"content-length", b"%d" % len(body))]
        await send(
            {"type": "websocket.http.response.start", "status": err.status, "headers": headers}
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if err.status < 500 else 1011})
