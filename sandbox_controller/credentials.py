"""The controller's credentials as lists, so that each can be rotated without an outage.

- API tokens: ``SANDBOX_API_TOKEN`` and ``SANDBOX_API_TOKENS`` (comma-separated, each
  ``token`` or ``id:token``) are all accepted at once; a caller is known by its token's
  id (``caller_id``), never by the token itself.
- Session-token secrets: ``SANDBOX_TOKEN_SECRET`` signs, ``SANDBOX_TOKEN_SECRET_PREVIOUS``
  (comma-separated) still verifies (tokens.py names each key by a key id).
- Hook secrets: ``SANDBOX_HOOK_SECRET`` keys the sandboxes' claim secrets, apart from the
  token secret; unset, the token secret does (as before it existed). Previous hook
  secrets still authenticate the hooks of pods made with them (``hook_keys``).

Pure: no I/O, nothing read from the environment here (config.py reads it).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from .sandbox_contract import hook_key

# An id in ``id:token``: what audit records and logs name the caller by.
_TOKEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
FINGERPRINT_HEX = 12


@dataclass(frozen=True)
class ApiToken:
    id: str
    token: str = ""

    def __repr__(self) -> str:  # never the token, in a log or a traceback
        return f"ApiToken(id={self.id!r})"


def fingerprint(token: str) -> str:
    """The id of a token given without one: the first 12 hex digits of its SHA-256
    (enough to tell tokens apart in an audit trail, nothing to recover the token by)."""
    return hashlib.sha256(token.encode()).hexdigest()[:FINGERPRINT_HEX]


def split_list(text: str | None) -> tuple[str, ...]:
    """A comma-separated setting's entries, stripped, the empty ones dropped."""
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


def parse_api_tokens(text: str | None) -> tuple[ApiToken, ...]:
    """``SANDBOX_API_TOKENS``: each entry ``id:token`` when the part before the first
    colon is an id, else the whole entry is the token (named by its fingerprint).
    ValueError for an empty token or an id given twice."""
    found: list[ApiToken] = []
    for entry in split_list(text):
        head, colon, rest = entry.partition(":")
        if colon and _TOKEN_ID.fullmatch(head):
            if not rest.strip():
                raise ValueError(f"the token of id {head!r} is empty")
            found.append(ApiToken(head, rest.strip()))
        else:
            found.append(ApiToken(fingerprint(entry), entry))
    ids = [t.id for t in found]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"token id given twice: {', '.join(twice)}")
    return tuple(found)


def api_tokens(single: str | None, listed: str | None) -> tuple[ApiToken, ...]:
    """Every accepted API token: ``SANDBOX_API_TOKEN`` (by its fingerprint) and the
    entries of ``SANDBOX_API_TOKENS``; the same token twice is kept once."""
    tokens = list(parse_api_tokens(listed))
    if single is not None and all(t.token != single for t in tokens):
        tokens.insert(0, ApiToken(fingerprint(single), single))
    return tuple(tokens)


def caller_of(tokens: Sequence[ApiToken], given: str) -> ApiToken | None:
    """The accepted token ``given`` is, if any. Every token is compared, so the time
    taken tells nothing of which (or whether one) matched."""
    raw = given.encode()
    found = None
    for token in tokens:
        if secrets.compare_digest(raw, token.token.encode()):
            found = token
    return found


def hook_keys(
    hook_secret: bytes | None,
    hook_previous: Sequence[bytes],
    token_secret: bytes,
    token_previous: Sequence[bytes],
) -> tuple[bytes, ...]:
    """The claim-secret keys, the current one first (new pods get their secret from it;
    a hook answering 401 to it is asked again with the others). Without a hook secret
    of its own the token secret keys the hooks, as before SANDBOX_HOOK_SECRET existed,
    so the previous token secrets still key the pods made before a token rotation."""
    if hook_secret:
        secrets_in_order = [hook_secret, *hook_previous]
    else:
        secrets_in_order = [token_secret, *hook_previous, *token_previous]
    keys: list[bytes] = []
    for secret in secrets_in_order:
        key = hook_key(secret)
        if key not in keys:
            keys.append(key)
    return tuple(keys)
