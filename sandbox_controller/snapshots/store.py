"""Where suspended sandboxes' archives live: the store's contract and its errors.

A store keeps opaque archives by key (``{session_id}/{taken_at_ms}.tar``, chosen by
the scheduler) with the one fact the restore needs back, the archive's
``Content-Encoding`` as the sandbox declared it. Archives are streamed in and out in
bounded chunks: nothing here holds a whole archive, so the controller's memory does not
grow with their size (a 500 MB workspace costs the same as a 5 KB one).

Two rules every store keeps, because the scheduler relies on them (SUSPEND.md, seam 2):
a ``put`` that fails, for whatever reason, is too large or is cancelled, leaves no
object behind; and an object is visible under its key only once it is whole.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# Keys are the scheduler's: path segments of plain characters, so that a key is a safe
# file name under FileStore's root and a plain object name under S3Store's prefix.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
KEY_DEPTH_MAX = 4
# Encodings a sandbox may declare on its archive (issue 20: tar, gzip or zstd).
ENCODINGS = frozenset({"gzip", "zstd"})


class StoreError(Exception):
    """Something about the store, in our words (never an archive's bytes)."""


class StoreUnavailable(StoreError):
    """The store could not be reached or refused to keep or give an archive."""


class SnapshotTooLarge(StoreError):
    """The archive grew past ``max_bytes``; what was written of it was removed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the archive is larger than the {max_bytes} bytes allowed")
        self.max_bytes = max_bytes


class ArchiveMissing(StoreError):
    """No archive under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no archive under {key!r}")
        self.key = key


@dataclass(frozen=True)
class ArchiveInfo:
    size: int
    encoding: str | None  # "gzip", "zstd", or None for a plain tar


class SnapshotStore(Protocol):
    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        encoding: str | None = None,
    ) -> int:
        """Keep what ``chunks`` yields under ``key``; its size. SnapshotTooLarge past
        ``max_bytes``, StoreUnavailable if the store fails; either way, and when
        ``chunks`` itself raises or the call is cancelled, no object is left."""
        ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """The archive, in bounded chunks; ArchiveMissing or StoreUnavailable from the
        first step of the iteration (or StoreUnavailable from a later one)."""
        ...

    async def info(self, key: str) -> ArchiveInfo:
        """Size and encoding, asked before a restore sends its headers."""
        ...

    async def delete(self, key: str) -> None:
        """Idempotent: deleting what is not there is fine."""
        ...

    async def keys(self) -> list[str]:
        """Every archive's key, for the sweep of archives no session owns."""
        ...

    async def close(self) -> None: ...


class Bounded:
    """A put's chunks, counted as they pass (``size``): SnapshotTooLarge as soon as
    they add up past ``max_bytes``, whatever the source promised. Every store's put
    reads its source through one."""

    def __init__(self, chunks: AsyncIterator[bytes], max_bytes: int) -> None:
        self._chunks = chunks
        self.max_bytes = max_bytes
        self.size = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise SnapshotTooLarge(self.max_bytes)
            yield chunk


def check_key(key: str) -> str:
    """The key, if it is one a store accepts; ValueError otherwise (a programming
    error: keys are made by the scheduler, never taken from a request)."""
    parts = key.split("/")
    if not 0 < len(parts) <= KEY_DEPTH_MAX or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise ValueError(f"not a snapshot key: {key!r}")
    return key


def check_encoding(encoding: str | None) -> str | None:
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"not an archive encoding: {encoding!r}")
    return encoding
