"""Finding the session token on a request, checking it, and the session cookie.

Carriers, in order of precedence: ``Authorization: Bearer``, ``X-Sandbox-Token``, the
``token`` query parameter, then the session cookie. An explicit carrier wins over the
cookie, so a stale cookie never shadows a fresh token. All of them are stripped before
forwarding (forward.py and websocket.py build the upstream headers).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_plus

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from sandbox_controller.tokens import (
    TokenClaims,
    TokenError,
    key_id,
    load_public_key,
    verify_token,
)

from .errors import controller_unavailable, forbidden, origin_mismatch, unauthorized

COOKIE_NAME = "sandbox_token"
_COOKIE_PREFIX = COOKIE_NAME.encode() + b"="


class Carrier(enum.Enum):
    """Where an explicit token came from (the cookie is the fallback, not a carrier)."""

    AUTHORIZATION = "authorization"
    HEADER = "header"
    QUERY = "query"


@dataclass(slots=True)
class Credentials:
    token: str | None = None
    carrier: Carrier | None = None  # None: no explicit token; the cookies are tried
    cookies: list[str] = field(default_factory=list)


def find_credentials(headers: list[tuple[bytes, bytes]], query: bytes) -> Credentials:
    creds = Credentials()
    bearer = header = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = rest.strip().decode("latin-1")
        elif name == b"x-sandbox-token":
            header = value.strip().decode("latin-1")
        elif name == b"cookie" and _COOKIE_PREFIX in value:
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(_COOKIE_PREFIX):
                    creds.cookies.append(part[len(_COOKIE_PREFIX) :].decode("latin-1"))
    if bearer is not None:
        creds.token, creds.carrier = bearer, Carrier.AUTHORIZATION
    elif header is not None:
        creds.token, creds.carrier = header, Carrier.HEADER
    else:
        from_query = query_token(query)
        if from_query is not None:
            creds.token, creds.carrier = from_query, Carrier.QUERY
    return creds


def query_token(query: bytes) -> str | None:
    if b"token=" not in query:
        return None
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        if key == b"token":
            return unquote_plus(value.decode("latin-1"))
    return None


def strip_query_token(query: bytes) -> bytes:
    if b"token" not in query:
        return query
    return b"&".join(i for i in query.split(b"&") if i.partition(b"=")[0] != b"token")


def same_host_location(raw_path: bytes, query: bytes) -> bytes:
    """The ``Location`` of the redirect that takes a token out of the address bar: the
    same path on the same host, whatever the path holds. A browser reads ``//host/x``
    and ``/\\host/x`` (a backslash is a slash to it) as another host, and drops tabs
    and newlines inside a URL; so a backslash, a control character, a space and any
    non-ASCII byte are percent-encoded, and a second leading slash becomes ``%2F``. The
    sandbox's server decodes those back, so it still sees the path it was asked for."""
    path = _escape_unsafe(raw_path if raw_path.startswith(b"/") else b"/" + raw_path)
    if path.startswith(b"//"):
        path = b"/%2F" + path[2:]
    return path + b"?" + _escape_unsafe(query) if query else path


def _escape_unsafe(part: bytes) -> bytes:
    if _LOCATION_SAFE.fullmatch(part):
        return part
    return _LOCATION_UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], part)


# Printable ASCII but the backslash: what may stay as written in a Location.
_LOCATION_SAFE = re.compile(rb"[!-\[\]-~]*")
_LOCATION_UNSAFE = re.compile(rb"[^!-\[\]-~]")


def host_only(set_cookie: bytes) -> bytes:
    """A sandbox's ``Set-Cookie`` without its ``Domain`` attribute (every one, in any
    case and spacing, as a browser reads them). In subdomain mode a Domain would reach
    every session's host, where host-only reaches this session's alone; in either mode
    it could reach the proxy's parent domain (the editor's site). Rewritten rather than
    dropped, so an app configured with its own host as the Domain (as apps behind a
    reverse proxy often are) keeps its cookies working."""
    if b"domain" not in set_cookie.lower():
        return set_cookie
    pair, *attributes = set_cookie.split(b";")
    kept = [a for a in attributes if a.partition(b"=")[0].strip().lower() != b"domain"]
    return b";".join([pair, *kept])


def strip_cookie(value: bytes) -> bytes:
    """The Cookie header without ours ("" if nothing is left)."""
    if _COOKIE_PREFIX not in value:
        return value
    parts = [p.strip() for p in value.split(b";")]
    return b"; ".join(p for p in parts if p and not p.startswith(_COOKIE_PREFIX))


class Verifier:
    """``verify_token`` with its answers kept: a client sends the same token on every
    request, and a signature check per request (about 0.2 ms for Ed25519) would be
    a large part of the proxy's time. Only tokens that verified are kept, keyed by the
    whole token, so a hit is the very string that verified; expiry is still checked on
    every use. Bounded: when full, it starts over (an LRU would cost more per hit than
    the rare re-verification).

    It holds public keys only (given, or fetched from the controller by tokenkeys.py):
    nothing here can make a token. Until it has one, every check is a 503."""

    MAX_KEPT = 1024

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._keys: tuple[str, ...] = ()
        self._loaded: list[Ed25519PublicKey] = []
        self._kids: frozenset[str] = frozenset()
        self._valid: dict[str, TokenClaims] = {}
        if keys:
            self.set_keys(keys)

    @property
    def ready(self) -> bool:
        return bool(self._loaded)

    def set_keys(self, keys: Sequence[str]) -> None:
        """Use these keys from now on (ValueError if one is not a key); a change forgets
        every token verified with the old ones."""
        if tuple(keys) == self._keys:
            return
        self._loaded = [load_public_key(k) for k in keys]
        self._kids = frozenset(key_id(k) for k in self._loaded)
        self._keys = tuple(keys)
        self._valid.clear()

    def knows(self, kid: str) -> bool:
        """Whether one of the keys has this key id (tokens.key_id)."""
        return kid in self._kids

    def verify(self, token: str, now: float) -> TokenClaims:
        claims = self._valid.get(token)
        if claims is None:
            if not self._loaded:
                raise controller_unavailable("the proxy has no token key from the controller yet")
            claims = verify_token(self._loaded, token, now)
            if len(self._valid) >= self.MAX_KEPT:
                self._valid.clear()
            self._valid[token] = claims
        elif claims.expires_at <= now:
            raise TokenError("token expired")
        return claims


def authenticate(
    verifier: Verifier, creds: Credentials, session_id: str, now: float
) -> TokenClaims:
    """The claims of a token for ``session_id``; ProxyError 401/403 otherwise."""
    candidates = [creds.token] if creds.token is not None else creds.cookies
    if not candidates:
        raise unauthorized("a session token is required")
    other_session = False
    for token in candidates:
        try:
            claims = verifier.verify(token, now)
        except TokenError as exc:
            if creds.token is not None:
                raise unauthorized(str(exc)) from None
            continue  # one stale cookie among several is not fatal
        if claims.session_id == session_id:
            return claims
        other_session = True
    if other_session:
        raise forbidden()
    raise unauthorized("invalid session token")


# Methods that change nothing (RFC 9110 9.2.1): a cross-site page may send these anyway.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def origin_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"origin":
            return value.decode("latin-1").strip()
    return None


def check_origin(origin: str | None, own: str, allowed: frozenset[str]) -> None:
    """A cookie rides along on any request the browser makes, whoever's page made it; so
    a cookie-authenticated request that names its page's origin (and every upgrade or
    write) must come from the session's own origin or an allowed editor origin.
    ``null`` (sandboxed iframes, file:) and none are refused."""
    if origin is None:
        raise origin_mismatch(None)
    seen = origin.rstrip("/").lower()
    if seen != own and seen not in allowed:
        raise origin_mismatch(origin)


def session_cookie(
    session_id: str,
    token: str,
    expires_at: int,
    now: float,
    secure: bool,
    *,
    host_only: bool = False,
) -> bytes:
    """Scoped to this session's routes, so one session's cookie never goes to another.

    In subdomain mode (``host_only``) the cookie has no Domain and Path=/: the browser
    sends it to the session's own host only. In path mode the id is re-escaped (";" and
    "," included) so it can never end the attribute early; a browser that spelled the
    path differently just does not send the cookie.
    """
    max_age = max(0, int(expires_at - now))
    path = "/" if host_only else "/s/" + quote(session_id, safe="-._~:@!$&'()*+=") + "/"
    cookie = f"{COOKIE_NAME}={token}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax"
    return (cookie + "; Secure" if secure else cookie).encode("latin-1")
