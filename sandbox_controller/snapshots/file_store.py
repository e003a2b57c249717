"""Archives as files under one directory: a Compose volume, a PVC, a folder in ``dev``.

An archive is written to a hidden temporary name beside its place, fsynced, then
renamed: a reader (or a crash) sees the whole archive or none. Its encoding, when the
sandbox declared one, sits in a hidden sidecar (``.<name>.encoding``) written before the
archive is renamed into place. Hidden names are never keys (store.check_key), so
``keys()`` lists archives only; partial files that a crash left are removed by it once
they are older than STALE_PART_AGE (no put runs that long).

Disk calls run in worker threads, a megabyte at a time, so the event loop never waits
on the disk and memory stays at a chunk or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from .store import (
    ArchiveInfo,
    ArchiveMissing,
    Bounded,
    StoreUnavailable,
    check_encoding,
    check_key,
)

# Chunks are gathered to this size before a write, and read back at this size.
IO_CHUNK = 1024 * 1024
STALE_PART_AGE = 24 * 3600.0
_PART = ".part-"
_SIDECAR = ".encoding"


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}{_SIDECAR}")

    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        encoding: str | None = None,
    ) -> int:
        path = self._path(key)
        check_encoding(encoding)
        part = path.with_name(f"{_PART}{path.name}.{secrets.token_hex(4)}")
        sidecar = self._sidecar(path)
        writing = f"cannot write to {self.root}"
        with _unavailable(writing):
            handle = await asyncio.to_thread(_open_part, part)
        source = Bounded(chunks, max_bytes)
        done = False
        # Only the disk's errors are the store's: an error of the source (the sandbox's
        # stream) passes through as it is.
        try:
            pending: list[bytes] = []
            gathered = 0
            async for chunk in source:
                pending.append(chunk)
                gathered += len(chunk)
                if gathered >= IO_CHUNK:
                    with _unavailable(writing):
                        await asyncio.to_thread(_write, handle, pending)
                    pending, gathered = [], 0
            with _unavailable(writing):
                await asyncio.to_thread(_write, handle, pending)
                await asyncio.to_thread(_finish, handle, part, path, sidecar, encoding)
            done = True
        finally:
            if not done:
                # Shielded: a cancelled put (the snapshot's deadline) must still clean up.
                await asyncio.shield(asyncio.to_thread(_discard, handle, part))
        return source.size

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise ArchiveMissing(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key}: {_why(exc)}") from None
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, IO_CHUNK)
                except OSError as exc:
                    raise StoreUnavailable(f"cannot read {key}: {_why(exc)}") from None
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    async def info(self, key: str) -> ArchiveInfo:
        path = self._path(key)
        try:
            return await asyncio.to_thread(_info, path, self._sidecar(path))
        except FileNotFoundError:
            raise ArchiveMissing(key) from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {key}: {_why(exc)}") from None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await asyncio.to_thread(_delete, self.root, path, self._sidecar(path))
        except OSError as exc:
            raise StoreUnavailable(f"cannot delete {key}: {_why(exc)}") from None

    async def keys(self) -> list[str]:
        try:
            return await asyncio.to_thread(_keys, self.root, time.time())
        except OSError as exc:
            raise StoreUnavailable(f"cannot list {self.root}: {_why(exc)}") from None

    async def close(self) -> None:
        return None


def _open_part(part: Path) -> BinaryIO:
    part.parent.mkdir(parents=True, exist_ok=True)
    return part.open("xb")


def _write(handle: BinaryIO, pieces: list[bytes]) -> None:
    for piece in pieces:
        handle.write(piece)


def _finish(handle: BinaryIO, part: Path, path: Path, sidecar: Path, encoding: str | None) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    if encoding is None:
        sidecar.unlink(missing_ok=True)
    else:
        _write_atomically(sidecar, encoding.encode())
    os.replace(part, path)
    _fsync_dir(path.parent)


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{_PART}{path.name}.{secrets.token_hex(4)}")
    temp.write_bytes(data)
    os.replace(temp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(handle: BinaryIO, part: Path) -> None:
    try:
        handle.close()  # a no-op when _finish closed it and then failed
    except OSError:
        pass  # the flush of a full disk: the file goes anyway
    part.unlink(missing_ok=True)


def _info(path: Path, sidecar: Path) -> ArchiveInfo:
    size = path.stat().st_size
    try:
        encoding = check_encoding(sidecar.read_text().strip())
    except FileNotFoundError:
        encoding = None
    return ArchiveInfo(size, encoding)


def _delete(root: Path, path: Path, sidecar: Path) -> None:
    path.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    # The session's directory goes with its last archive (best effort: a put may race).
    parent = path.parent
    while parent != root and root in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _keys(root: Path, now: float) -> list[str]:
    found: list[str] = []
    if not root.is_dir():
        return found
    for directory, _, files in os.walk(root):
        for name in files:
            full = Path(directory, name)
            if name.startswith(_PART):
                if now - full.stat().st_mtime > STALE_PART_AGE:
                    full.unlink(missing_ok=True)
                continue
            if name.startswith("."):
                continue  # a sidecar
            found.append(full.relative_to(root).as_posix())
    return sorted(found)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StoreUnavailable(f"{what}: {_why(exc)}") from None


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
