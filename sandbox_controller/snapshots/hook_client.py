"""The snapshot and restore hooks, as the controller calls them, streamed end to end.

``take_snapshot`` asks a pod for ``POST /_sandbox/snapshot`` and pipes the answer (a tar,
``Content-Encoding: gzip`` or ``zstd`` if the sandbox says so) into the store as it
arrives; ``restore_snapshot`` pipes the archive from the store into a fresh pod's
``POST /_sandbox/restore`` with the headers it came with. Chunks are as large as the
network's reads and the store's: the controller's memory does not grow with an
archive (benchmarks/suspend_bench.py measures it on 500 MB).

The answer is hostile input (bounded.py): one total deadline for the whole call, the
size capped by ``max_bytes`` whatever Content-Length says, and the body kept raw (never
decompressed here). Every failure is one exception carrying a reason the scheduler maps
to an outcome of ``sandbox_snapshots_total`` and an end detail; its detail is in our
words plus, for an HTTP refusal, a printable quote of the sandbox's first bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Literal

import httpx

from ..quoting import ANSWER_READ_MAX, quote
from ..sandbox_contract import HOOK_NOT_IMPLEMENTED, RESTORE_PATH, SNAPSHOT_PATH
from .store import (
    ENCODINGS,
    ArchiveMissing,
    SnapshotStore,
    SnapshotTooLarge,
    StoreUnavailable,
)

ARCHIVE_TYPE = "application/x-tar"
# A restore's answer is a status; its body is read no further than this, for a quote.
_ANSWER_MAX = ANSWER_READ_MAX

SnapshotReason = Literal["not_supported", "hook_error", "timeout", "too_large", "store_unavailable"]
RestoreReason = Literal[
    "not_supported", "hook_error", "timeout", "archive_missing", "store_unavailable"
]


class SnapshotFailed(Exception):
    def __init__(self, reason: SnapshotReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: SnapshotReason = reason
        self.detail = detail


class RestoreFailed(Exception):
    def __init__(self, reason: RestoreReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RestoreReason = reason
        self.detail = detail


def _headers(claim_secret: str) -> dict[str, str]:
    # Raw bytes are kept: ask for them as the sandbox made them, not re-encoded.
    return {"authorization": f"Bearer {claim_secret}", "accept-encoding": "identity"}


async def take_snapshot(
    http: httpx.AsyncClient,
    address: str,
    claim_secret: str,
    store: SnapshotStore,
    key: str,
    *,
    max_bytes: int,
    timeout: float,
) -> int:
    """Stream the pod's archive into ``store`` under ``key``; its size in bytes.
    SnapshotFailed otherwise, and then nothing is left in the store."""
    url = f"http://{address}{SNAPSHOT_PATH}"
    try:
        async with (
            asyncio.timeout(timeout),
            http.stream("POST", url, headers=_headers(claim_secret), timeout=timeout) as answer,
        ):
            encoding = await _archive_encoding(answer, max_bytes, claim_secret)
            return await store.put(key, answer.aiter_raw(), max_bytes=max_bytes, encoding=encoding)
    except TimeoutError:
        raise SnapshotFailed("timeout", f"no whole archive within {timeout:g} s") from None
    except httpx.TimeoutException:
        raise SnapshotFailed("timeout", "the sandbox stopped sending") from None
    except SnapshotTooLarge as exc:
        raise SnapshotFailed("too_large", str(exc)) from None
    except StoreUnavailable as exc:
        raise SnapshotFailed("store_unavailable", str(exc)) from None
    except httpx.HTTPError as exc:
        raise SnapshotFailed("hook_error", _error_words(exc)) from None


async def _archive_encoding(
    answer: httpx.Response, max_bytes: int, claim_secret: str
) -> str | None:
    """The encoding of an archive the sandbox is sending; SnapshotFailed if it is not
    sending one (a refusal, another type, an encoding not allowed, a declared size over
    the limit)."""
    status = answer.status_code
    if status in HOOK_NOT_IMPLEMENTED:
        raise SnapshotFailed("not_supported", f"the sandbox has no snapshot hook (HTTP {status})")
    if not 200 <= status < 300:
        raise SnapshotFailed("hook_error", await _refusal(answer, claim_secret))
    media = answer.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != ARCHIVE_TYPE:
        raise SnapshotFailed("hook_error", f"an answer of type {media or 'none'!r}, not a tar")
    encoding = answer.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ENCODINGS | {"identity"}:
        raise SnapshotFailed("hook_error", f"an archive encoded {encoding[:40]!r}")
    declared = answer.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise SnapshotFailed("too_large", f"an archive of {declared} bytes, over {max_bytes}")
    return None if encoding == "identity" else encoding


async def restore_snapshot(
    http: httpx.AsyncClient,
    address: str,
    claim_secret: str,
    store: SnapshotStore,
    key: str,
    *,
    timeout: float,
) -> None:
    """Stream the archive under ``key`` into the pod's restore hook; RestoreFailed if
    the pod did not take it whole (the archive stays in the store either way)."""
    url = f"http://{address}{RESTORE_PATH}"
    try:
        async with asyncio.timeout(timeout):
            info = await store.info(key)
            headers = _headers(claim_secret) | {
                "content-type": ARCHIVE_TYPE,
                "content-length": str(info.size),
            }
            if info.encoding is not None:
                headers["content-encoding"] = info.encoding
            # Closed when the call ends, however: a sandbox may answer before it has
            # read the whole body, and the store's download must not wait for the GC.
            chunks = store.get(key)
            try:
                async with http.stream(
                    "POST", url, content=chunks, headers=headers, timeout=timeout
                ) as answer:
                    status = answer.status_code
                    if status in HOOK_NOT_IMPLEMENTED:
                        detail = f"the sandbox has no restore hook (HTTP {status})"
                        raise RestoreFailed("not_supported", detail)
                    if not 200 <= status < 300:
                        raise RestoreFailed("hook_error", await _refusal(answer, claim_secret))
            finally:
                if isinstance(chunks, AsyncGenerator):
                    await chunks.aclose()
    except TimeoutError:
        raise RestoreFailed("timeout", f"the restore took over {timeout:g} s") from None
    except httpx.TimeoutException:
        raise RestoreFailed("timeout", "the sandbox stopped taking or answering") from None
    except ArchiveMissing as exc:
        raise RestoreFailed("archive_missing", str(exc)) from None
    except StoreUnavailable as exc:
        raise RestoreFailed("store_unavailable", str(exc)) from None
    except httpx.HTTPError as exc:
        raise RestoreFailed("hook_error", _error_words(exc)) from None


async def _refusal(answer: httpx.Response, claim_secret: str) -> str:
    """``HTTP <status>`` and a quote of the first bytes the sandbox said, read within
    the call's deadline; the claim secret blanked, should the sandbox echo its request."""
    raw = b""
    try:
        async for chunk in answer.aiter_raw():
            raw += chunk
            if len(raw) >= _ANSWER_MAX:
                break
    except httpx.HTTPError:
        pass
    words = quote(raw[:_ANSWER_MAX], [claim_secret])
    return f"HTTP {answer.status_code}" + (f": {words}" if words else "")


def _error_words(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the sandbox broke off the archive"
    return type(exc).__name__
