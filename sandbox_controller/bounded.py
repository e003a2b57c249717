"""Reading what a process we do not control answers: a size cap and a depth bound.

A sandbox's answer is hostile input. Its body is streamed and read no further than a
cap (whatever Content-Length says, chunked or not), raw (no decompression, so no
compression bomb), and a JSON document is checked for depth before it is parsed, so
100,000 nested brackets are a refused answer rather than a RecursionError. The
caller bounds the time (a total deadline: one byte a second must not stretch it).

Kept apart from the hooks that use it, so the next answers (the snapshot hooks'
control messages) are read the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

# A hook's JSON answer ({"busy", "detail"} and the like) is a few hundred bytes.
JSON_ANSWER_MAX = 64 * 1024
# Far beyond any answer the contract defines, far below the parser's recursion limit.
JSON_DEPTH_MAX = 32

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


class AnswerRefused(Exception):
    """An answer broke a bound (size, depth, time) or is not what was asked for. The
    message says which, in our words: never the answer's own bytes."""


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response (``client.stream``), at most ``limit`` bytes.
    AnswerRefused past it: no more than one read beyond the limit is ever held."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise AnswerRefused(f"an answer of {int(declared)} bytes, over the {limit} allowed")
    pieces: list[bytes] = []
    size = 0
    async for piece in response.aiter_raw():
        size += len(piece)
        if size > limit:
            raise AnswerRefused(f"an answer over the {limit} bytes allowed")
        pieces.append(piece)
    return b"".join(pieces)


def too_deep(document: bytes, max_depth: int) -> bool:
    """Whether a JSON document nests arrays and objects deeper than ``max_depth``
    (brackets inside strings do not count). Linear, and stops at the first too deep."""
    depth = 0
    for byte in _STRING.sub(b"", document).translate(None, _NOT_BRACKET):
        if byte in _OPENING:
            depth += 1
            if depth > max_depth:
                return True
        else:
            depth -= 1
    return False


def loads_json(document: bytes, max_depth: int = JSON_DEPTH_MAX) -> Any:
    """Parse a JSON answer already read within its cap; AnswerRefused if it is too
    deep or not JSON."""
    if too_deep(document, max_depth):
        raise AnswerRefused(f"a JSON answer nested deeper than {max_depth}")
    try:
        return json.loads(document)
    except (ValueError, RecursionError):  # RecursionError: only if the check above erred
        raise AnswerRefused("an answer that is not JSON") from None


async def read_json(
    response: httpx.Response, limit: int = JSON_ANSWER_MAX, max_depth: int = JSON_DEPTH_MAX
) -> Any:
    """A streamed response's JSON body, read within ``limit`` bytes and ``max_depth``."""
    return loads_json(await read_capped(response, limit), max_depth)
