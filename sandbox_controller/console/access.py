"""Who may use the console: sign-in with a token, a signed cookie, CSRF tokens.

The API token signs in an operator who may act (end sessions); the read-only
SANDBOX_CONSOLE_TOKEN one who may only look. The cookie holds the role and an expiry
under an HMAC whose key derives from the token secret and the token that signed in:
changing either token signs out everyone who used it. A form's CSRF token is an HMAC
of the cookie, so a page of another origin can neither read nor forge it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

COOKIE = "sandbox_console"
COOKIE_PATH = "/console"
# A working day; signing in again after it is cheap.
COOKIE_TTL = 12 * 3600
COOKIE_MAX = 256  # longer is not one of ours: not even parsed


class Role(enum.StrEnum):
    OPERATOR = "operator"  # signed in with the API token: may end sessions
    VIEWER = "viewer"  # signed in with SANDBOX_CONSOLE_TOKEN: looks only


@dataclass(frozen=True)
class Visitor:
    role: Role
    csrf: str

    @property
    def may_act(self) -> bool:
        return self.role is Role.OPERATOR


class Access:
    def __init__(self, api_tokens: Sequence[str], console_token: str | None) -> None:
        # Operators sign in with any accepted API token (SANDBOX_API_TOKEN, _TOKENS).
        self._tokens: dict[Role, tuple[str, ...]] = {
            Role.OPERATOR: tuple(api_tokens),
            Role.VIEWER: (console_token,) if console_token else (),
        }
        # No API token (an API on loopback only, as the API itself allows): the
        # console is open too, to operators, and forms still carry a CSRF token.
        self.open = not api_tokens
        self._secret = b""

    def keyed(self, token_secret: bytes) -> None:
        """The controller's token secret (known once it has started)."""
        self._secret = token_secret or secrets.token_bytes(32)

    def _key(self, role: Role) -> bytes:
        # The role's tokens key its cookies: dropping a token signs its holders out.
        token = ",".join(self._tokens[role])
        return hmac.new(self._secret, f"console:{role}:{token}".encode(), hashlib.sha256).digest()

    def _mac(self, role: Role, text: str) -> str:
        return hmac.new(self._key(role), text.encode(), hashlib.sha256).hexdigest()

    def role_for_token(self, given: str) -> Role | None:
        found = None
        for role, tokens in self._tokens.items():
            for token in tokens:
                if secrets.compare_digest(given.encode(), token.encode()):
                    found = role
        return found

    def cookie(self, role: Role, now: float) -> str:
        body = f"{role}.{int(now) + COOKIE_TTL}.{secrets.token_hex(8)}"
        return f"{body}.{self._mac(role, body)}"

    def visitor(self, cookie: str | None, now: float) -> Visitor | None:
        """Who holds this cookie, if it is ours, untampered and unexpired."""
        if self.open:
            return Visitor(Role.OPERATOR, self._mac(Role.OPERATOR, "csrf:open"))
        if not cookie or len(cookie) > COOKIE_MAX:
            return None
        body, _, mac = cookie.rpartition(".")
        role_name, _, rest = body.partition(".")
        expires, _, _nonce = rest.partition(".")
        try:
            role = Role(role_name)
            expiry = int(expires)
        except ValueError:
            return None
        if not self._tokens[role] or expiry < now:
            return None
        if not secrets.compare_digest(mac.encode(), self._mac(role, body).encode()):
            return None
        return Visitor(role, self._mac(role, f"csrf:{cookie}"))

    @staticmethod
    def csrf_ok(visitor: Visitor, given: str) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), visitor.csrf.encode())
