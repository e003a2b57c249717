"""Who called the API: the accepted token the request carried, known by its id.

Every route of the session API sets ``request.state.caller`` (a ``Caller``) before it
runs; ``caller_id(request)`` reads it. The id is the ``id`` of an ``id:token`` entry of
SANDBOX_API_TOKENS, else the token's fingerprint (credentials.fingerprint: 12 hex digits
of its SHA-256), so logs and audit events can say which credential acted and never
hold the credential itself. With no API token at all (an API on loopback), every caller
is ``anonymous``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.requests import Request

from ..credentials import ApiToken, caller_of


@dataclass(frozen=True)
class Caller:
    token_id: str  # the token's id, or its fingerprint; "anonymous" with no API token


ANONYMOUS = Caller("anonymous")


def authenticated_caller(authorization: str, tokens: Sequence[ApiToken]) -> Caller | None:
    """The caller whose ``Authorization: Bearer`` header carries one of ``tokens``."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    found = caller_of(tokens, value)
    return None if found is None else Caller(found.id)


def caller_id(request: Request) -> str | None:
    """The authenticated caller's token id (set by the API's auth dependency); None on
    routes that take no API token (probes, /internal/*, the console's own sign-in)."""
    caller = getattr(request.state, "caller", None)
    return caller.token_id if isinstance(caller, Caller) else None
