"""Session tokens: HMAC-signed, so the proxy verifies them without asking anyone.

A token reads ``<session_id>.<expiry>.<signature>`` in URL-safe base64 pieces. The
session id inside it is what the proxy compares with the path, so a token opens
exactly one session's routes (docs/architecture.md invariant 6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass


class TokenError(Exception):
    """The token is malformed, forged or expired."""


@dataclass(frozen=True)
class TokenClaims:
    session_id: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest())


def issue_token(secret: bytes, session_id: str, expires_at: float) -> str:
    payload = f"{_b64(session_id.encode())}.{int(expires_at)}"
    return f"{payload}.{_signature(secret, payload)}"


def verify_token(secret: bytes, token: str, now: float) -> TokenClaims:
    parts = token.split(".")
    if len(parts) != 3 or not all(parts) or len(token) > 2048:
        raise TokenError("malformed token")
    payload = f"{parts[0]}.{parts[1]}"
    # Compare signatures in constant time before trusting anything in the payload.
    if not hmac.compare_digest(_signature(secret, payload), parts[2]):
        raise TokenError("bad signature")
    try:
        session_id = _unb64(parts[0]).decode("utf-8")
        expires_at = int(parts[1])
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if expires_at <= now:
        raise TokenError("token expired")
    return TokenClaims(session_id, expires_at)
