"""Session tokens: signed with Ed25519, so the proxy verifies them without asking anyone
and without holding anything that could make one.

A token reads ``<key_id>.<session_id>.<expiry>.<signature>`` in URL-safe base64 pieces
(tokens from before key ids read ``<session_id>.<expiry>.<signature>`` and still verify,
against every key). The session id inside it is what the proxy compares with the path, so
a token opens exactly one session's routes (docs/architecture.md invariant 6).

The signing key is derived from ``SANDBOX_TOKEN_SECRET`` (HKDF), so a deployment keeps
one secret and every controller replica signs alike; the proxies get only the public
keys (``public_key``), which verify and cannot sign. The key id names the public key
(``key_id``: a hash of it), so a proxy picks the one key that checks a token, and knows
when a token names a key it has not learnt yet (a rotation: ``UnknownKey``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
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


class UnknownKey(TokenError):
    """The token names a key id none of the keys has: signed by a key not learnt yet."""

    def __init__(self, kid: str) -> None:
        super().__init__("token signed by an unknown key")
        self.kid = kid


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


def key_id(public: Ed25519PublicKey) -> str:
    """A public key's id in tokens: 8 characters of base64url of its SHA-256. Names the
    key, tells nothing of the secret (the public key itself is no secret)."""
    return _b64(hashlib.sha256(public.public_bytes_raw()).digest()[:6])


def secret_key_id(secret: bytes) -> str:
    """The key id of the tokens ``secret`` signs (for logs and docs)."""
    return key_id(signing_key(secret).public_key())


def load_public_key(text: str) -> Ed25519PublicKey:
    """A verify key from its base64url form; ValueError if it is not one."""
    raw = _unb64(text.strip())
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def token_key_id(token: str) -> str | None:
    """The key id a token names (unverified: only which key to check it with), or None
    for a token from before key ids, or for what is no token."""
    parts = token.split(".", 4)
    return parts[0] if len(parts) == 4 and len(token) <= MAX_TOKEN else None


def issue_token(secret: bytes, session_id: str, expires_at: float) -> str:
    key = signing_key(secret)
    kid = key_id(key.public_key())
    payload = f"{kid}.{_b64(session_id.encode())}.{int(expires_at)}"
    signature = key.sign(payload.encode("ascii"))
    return f"{payload}.{_b64(signature)}"


def verify_token(keys: Sequence[Ed25519PublicKey], token: str, now: float) -> TokenClaims:
    """The claims of a token signed by any of ``keys``; TokenError otherwise (UnknownKey
    when it names a key id that none of ``keys`` has)."""
    parts = token.split(".")
    if len(parts) not in (3, 4) or not all(parts) or len(token) > MAX_TOKEN:
        raise TokenError("malformed token")
    try:
        signature = _unb64(parts[-1])
        payload = ".".join(parts[:-1]).encode("ascii")
    except ValueError as exc:
        raise TokenError("malformed token") from exc
    if len(parts) == 4:  # a key id: that key alone may have signed it
        kid = parts[0]
        keys = [k for k in keys if key_id(k) == kid]
        if not keys:
            raise UnknownKey(kid)
        parts = parts[1:]
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
