"""A sandbox's words, made fit to keep: bounded, printable, and free of the secrets it
was sent.

A refused claim is recorded with what the sandbox answered (the session's
``end_detail``), so the caller learns why. The answer comes from code an agent may have
written: only its first bytes are read, control characters go, and any env value or
file content of the claim it echoes back is blanked, since those secrets never reach
the database or a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

# Bytes of an error answer read at most (the rest is never read).
ANSWER_READ_MAX = 4096
# Characters of it kept.
QUOTE_MAX = 200
REDACTED = "[redacted]"
# A secret echoed in part at the cut is blanked from this many characters on.
_PARTIAL_MIN = 4
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]+")
_SPACES = re.compile(r"\s+")


def quote(raw: bytes, secrets: Iterable[str] = ()) -> str:
    """The answer's first QUOTE_MAX characters, on one line, with ``secrets`` blanked."""
    cut = len(raw) >= ANSWER_READ_MAX
    text = raw[:ANSWER_READ_MAX].decode("utf-8", errors="replace")
    if cut:
        text = text.rstrip("\ufffd")  # a character split by the cut
    text = redact(text, _spellings(secrets))
    text = _SPACES.sub(" ", _UNPRINTABLE.sub(" ", text)).strip()
    return text if len(text) <= QUOTE_MAX else text[: QUOTE_MAX - 1] + "…"


def _spellings(secrets: Iterable[str]) -> list[str]:
    """Each secret as sent, and as a JSON string would echo it (an error answer that
    quotes its input, as FastAPI's 422 does)."""
    out = set()
    for secret in secrets:
        if secret:
            out.add(secret)
            out.add(json.dumps(secret)[1:-1])
            out.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    return sorted(out, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """Blank every whole secret in ``text`` (longest first), and a secret's start where
    the text ends (the read stopped inside it)."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    for secret in secrets:
        head = secret[:_PARTIAL_MIN]
        at = text.find(head, max(0, len(text) - len(secret) + 1))
        while at != -1:
            if secret.startswith(text[at:]):
                text = text[:at] + REDACTED
                break
            at = text.find(head, at + 1)
    return text
