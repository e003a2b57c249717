"""Session tokens: signed with Ed25519, so the proxy verifies them without asking anyone
and without holding anything that could make one.

A token reads ``<session_id>.<expiry>.<signature>`` in URL-safe base64 pieces. The
session id inside it is what the proxy compares with the path, so a token opens
exactly one session's routes (docs/architecture.md invariant 6).

The signing key is derived from ``SANDBOX_TOKEN_SECRET`` (HKDF), so a deployment keeps
one secret and every controller replica signs alike; the proxies get only the public
key (``public_key``), which verifies and cannot sign.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# HKDF context: a key derived for session tokens is never the key of anything else
# (the claim secrets derive from the same secret with another label, sandbox_contract.hook_key).
_KEY_INFO = b"agent-sandbox session token signing key, ed25519, v1"
MAX_TOKEN = 2048


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


@functools.lru_cache(maxsize=8)
def signing_key(secret: bytes) -> Ed25519PrivateKey:
    """The token signing key of ``secret`` (derived once per secret, then kept)."""
    seed = HKDF(algorithm=SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret)
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(secret: bytes) -> str:
    """The verify key of ``secret``'s tokens, as the proxies are given it (base64url)."""
    return _b64(signing_key(secret).public_key().public_bytes_raw())


def load_public_key(text: str) -> Ed25519PublicKey:
    """A verify key from its base64url form; ValueError if it is not one."""
    raw = _unb64(text.strip())
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def issue_token(secret: bytes, session_id: str, expires_at: float) -> str:
    payload = f"{_b64(session_id.encode())}.{int(expires_at)}"
    signature = signing_key(secret).sign(payload.encode("ascii"))
    return f"{payload}.{_b64(signature)}"


def verify_token(keys: Sequence[Ed25519PublicKey], token: str, now: float) -> TokenClaims:
    """The claims of a token signed by any of ``keys``; TokenError otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts) or len(token) > MAX_TOKEN:
        raise TokenError("malformed token")
    try:
        signature = _unb64(parts[2])
        payload = f"{parts[0]}.{parts[1]}".encode("ascii")
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    # The signature first: nothing in the payload is trusted before it checks out.
    for key in keys:
        try:
            key.verify(signature, payload)
            break
        except InvalidSignature:
            continue
    else:
        raise TokenError("bad signature")
    try:
        session_id = _unb64(parts[0]).decode("utf-8")
        expires_at = int(parts[1])
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if expires_at <= now:
        raise TokenError("token expired")
    return TokenClaims(session_id, expires_at)
