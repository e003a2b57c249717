"""Which session a request is for, read from the raw (still escaped) path.

In path mode only ``/s/{session_id}/...`` forwards; in subdomain mode the session is
the first label of ``Host`` (``{session_id}.{domain}``) and the whole path forwards. The session id is taken from the raw path, never
from the decoded one, and any dot segment (``.``/``..``, plain or percent-encoded, even
double-encoded) is refused with 400 before auth or routing. Refusing is simpler and
safer than normalising: a normaliser in front of us, in the sandbox, or in a browser
could then disagree with us about which session a path names (docs/architecture.md
invariant 6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from sandbox_controller.sandbox_contract import HOOK_PREFIX

from .errors import ProxyError, bad_path

PREFIX = b"/s/"
MAX_SESSION_ID = 253


@dataclass(frozen=True, slots=True)
class Target:
    session_id: str
    upstream_path: bytes  # raw and escaped, always starting with "/"


def _is_dot_segment(segment: bytes) -> bool:
    if b"." not in segment and b"%" not in segment:
        return False
    # Decode a few times so %252e%252e (decoded twice by some stacks) is caught too.
    for _ in range(3):
        if segment in (b".", b".."):
            return True
        decoded = unquote_to_bytes(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment in (b".", b"..")


# One DNS label: what a session id must be to name a host (ids are uuid4 hex).
_LABEL = re.compile(rb"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


# The sandbox contract's hooks (claim, status, release) are the controller's alone: a
# session's page or its user reaching them through the proxy is refused as if absent.
HOOKS_SEGMENT = HOOK_PREFIX.strip("/").encode()


def _upstream(tail: bytes) -> bytes:
    """The upstream path, unless it reaches the hooks under /_sandbox/: its first
    non-empty segment, however percent-encoded (an encoded slash included, which the
    sandbox's server decodes into a real one) and in any case, is refused (404)."""
    path = tail
    if b"%" in path:
        # Decode a few times, so double-encoding (%255F, %252F) is caught too.
        for _ in range(3):
            decoded = unquote_to_bytes(path)
            if decoded == path:
                break
            path = decoded
    # A backslash is a slash to some servers; ";" starts path parameters to others.
    segment = path.replace(b"\\", b"/").lstrip(b"/").split(b"/", 1)[0].split(b";", 1)[0]
    if segment.lower() == HOOKS_SEGMENT:
        raise ProxyError(404, "not_found", "/_sandbox/ is the controller's, not proxied")
    return tail


def _refuse_dot_segments(raw_path: bytes) -> None:
    if b"." not in raw_path and b"%" not in raw_path:
        return  # most paths: no segment can be a dot segment, so none is looked at
    for segment in raw_path.split(b"/"):
        if _is_dot_segment(segment):
            raise bad_path("dot segments are not allowed in sandbox paths")


def host_target(host: bytes, domain: bytes, raw_path: bytes) -> Target | None:
    """The target on a session's own host (``{id}.{domain}[:port]``); None for any other."""
    name = host.rpartition(b":")[0] if host.rfind(b":") > host.rfind(b"]") else host
    name = name.lower()
    if not name.endswith(b"." + domain):
        return None
    label = name[: -len(domain) - 1]
    if not _LABEL.fullmatch(label):
        return None
    _refuse_dot_segments(raw_path)
    return Target(label.decode("ascii"), _upstream(raw_path or b"/"))


def parse_target(raw_path: bytes) -> Target | None:
    """The target of a ``/s/...`` path, None for any other path; ProxyError(400) if unsafe."""
    if not raw_path.startswith(PREFIX):
        return None
    _refuse_dot_segments(raw_path)
    rest = raw_path[len(PREFIX) :]
    slash = rest.find(b"/")
    raw_id, tail = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    try:
        session_id = unquote_to_bytes(raw_id).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_path("the session id is not valid UTF-8") from None
    if (
        not session_id
        or len(session_id) > MAX_SESSION_ID
        or "/" in session_id
        or not session_id.isprintable()
    ):
        raise bad_path("malformed session id")
    return Target(session_id, _upstream(tail))
