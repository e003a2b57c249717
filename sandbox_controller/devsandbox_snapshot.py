"""devsandbox's snapshot and restore hooks: its workspace directory as a tar stream.

``POST /_sandbox/snapshot`` answers the workspace as ``application/x-tar`` with
``Content-Encoding: gzip`` (or plain, ``--snapshot-encoding identity``), made while it
is sent; ``POST /_sandbox/restore`` unpacks such a stream into the workspace as it
arrives. Neither holds more than a few chunks: tarfile works in a thread, fed by (or
feeding) a small bounded queue, so a 500 MB workspace costs the sandbox no more memory
than a small one.

A restore takes regular files and directories and symbolic links that stay inside the
workspace; anything else (an absolute name, ``..``, a link out, a device) stops it with
422 ``unsafe_archive`` (tarfile's ``data`` filter, which resolves links already on disk).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import queue
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, Literal

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

ARCHIVE_TYPE = "application/x-tar"
Encoding = Literal["gzip", "identity"]
# Size of the pieces that cross between the tar thread and the event loop, and how many
# may wait: the memory either hook holds beyond tarfile's own buffers.
PIECE = 256 * 1024
QUEUE_DEPTH = 4
_END = b""


class _Stopped(Exception):
    """The other side went away: stop the tar thread."""


class _QueueWriter(io.RawIOBase):
    """A file the tar thread writes into; each write waits for room in the queue."""

    def __init__(self, out: queue.Queue[bytes | BaseException], stop: threading.Event) -> None:
        self._out = out
        self._stop = stop

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        piece = bytes(data)
        if not piece:
            return 0  # an empty piece would read as the end
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._out.put(piece, timeout=0.2)
                return len(piece)
            except queue.Full:
                continue


class _QueueReader(io.RawIOBase):
    """A file the tar thread reads from, filled by the request body."""

    def __init__(self, source: queue.Queue[bytes | None]) -> None:
        self._source = source
        self._left = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left and not self._done:
            piece = self._source.get()
            if piece is None:
                self._done = True
            else:
                self._left = piece
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


def _pack(workdir: Path, encoding: Encoding, sink: IO[bytes]) -> None:
    if encoding == "gzip":
        # Level 1: a workspace is mostly already-compressed or small text; speed wins.
        with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1) as packed:
            _tar_into(workdir, packed)
    else:
        _tar_into(workdir, sink)
    sink.flush()


def _tar_into(workdir: Path, out: IO[bytes] | gzip.GzipFile) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(workdir.rglob("*")):
            tar.add(path, arcname=path.relative_to(workdir).as_posix(), recursive=False)


async def _stream_thread(work: Callable[[IO[bytes]], None]) -> AsyncIterator[bytes]:
    """What ``work`` writes in a thread, as it writes it; the thread stops if the
    reader goes away (the controller's deadline, a dropped connection)."""
    pieces: queue.Queue[bytes | BaseException] = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()

    def run() -> None:
        sink = io.BufferedWriter(_QueueWriter(pieces, stop), PIECE)
        try:
            work(sink)
            pieces.put(_END)
        except _Stopped:
            return
        except BaseException as exc:
            pieces.put(exc)

    thread = threading.Thread(target=run, name="devsandbox-snapshot", daemon=True)
    thread.start()
    try:
        while True:
            piece = await asyncio.to_thread(pieces.get)
            if isinstance(piece, BaseException):
                raise piece
            if piece == _END:
                return
            yield piece
    finally:
        stop.set()
        try:
            pieces.put_nowait(_END)  # wakes a worker still waiting in pieces.get
        except queue.Full:
            pass  # then nobody waits in get


def snapshot_response(workdir: Path | None, encoding: Encoding) -> Response:
    """The workspace as a tar stream (an empty tar if there is none yet)."""
    headers = {"content-encoding": encoding} if encoding != "identity" else {}
    if workdir is None:
        return Response(_empty_tar(encoding), media_type=ARCHIVE_TYPE, headers=headers)
    return StreamingResponse(
        _stream_thread(lambda sink: _pack(workdir, encoding, sink)),
        media_type=ARCHIVE_TYPE,
        headers=headers,
    )


def _empty_tar(encoding: Encoding) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w"):
        pass
    data = buffer.getvalue()
    return gzip.compress(data) if encoding == "gzip" else data


def _problem(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class UnsafeMember(tarfile.TarError):
    """A member that would land outside the workspace, or is no file, directory or link."""


# tarfile's extraction filters came with Python 3.11.4; sandbox images on Debian
# bookworm (3.11.2) have none, so the same rules are kept by hand there.
_FILTERS = hasattr(tarfile, "data_filter")
_REFUSED: tuple[type[Exception], ...] = (UnsafeMember,) + (
    (tarfile.FilterError,) if _FILTERS else ()
)


def _inside_only(member: tarfile.TarInfo, workdir: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter, but an absolute name is refused rather than made
    relative: an archive that names a place outside is not ours to reinterpret."""
    if member.name.startswith("/"):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, workdir)


def _within(root: str, path: str) -> bool:
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _checked(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """The ``data`` filter's rules without tarfile's filters: inside the workspace,
    links included; regular files, directories and links only."""
    name = member.name
    if name.startswith("/") or not _within(root, os.path.join(root, name)):
        raise UnsafeMember(f"{name!r} is outside the workspace")
    if member.issym():
        target = os.path.join(os.path.dirname(os.path.join(root, name)), member.linkname)
        if member.linkname.startswith("/") or not _within(root, target):
            raise UnsafeMember(f"{name!r} links outside the workspace")
    elif member.islnk():
        if not _within(root, os.path.join(root, member.linkname)):
            raise UnsafeMember(f"{name!r} links outside the workspace")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeMember(f"{name!r} is neither a file, a directory nor a link")
    return member


def _unpack(source: IO[bytes], workdir: Path, gzipped: bool) -> None:
    # Read and copied in pieces, not tarfile's 10 and 16 KiB records: a third of the
    # calls' time on a 50 MB workspace went to that bookkeeping (benchmarks/README §23).
    with tarfile.open(fileobj=source, mode="r|gz" if gzipped else "r|", bufsize=PIECE) as tar:
        tar.copybufsize = PIECE  # type: ignore[attr-defined]  # (typeshed lacks it)
        if _FILTERS:
            tar.extractall(workdir, filter=_inside_only)
            return
        root = os.path.realpath(workdir)
        for member in tar:
            tar.extract(_checked(member, root), root, set_attrs=False)
            if member.isfile():  # the data filter's modes: no setuid, owner may write
                os.chmod(os.path.join(root, member.name), (member.mode & 0o755) | 0o600)


async def restore(request: Request, workdir: Path) -> Response:
    """Unpack the request's archive into ``workdir`` while it arrives."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != ARCHIVE_TYPE:
        return _problem(415, "unsupported_media_type", f"send {ARCHIVE_TYPE}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("gzip", "identity"):
        return _problem(415, "unsupported_encoding", "this sandbox takes gzip or a plain tar")
    pieces: queue.Queue[bytes | None] = queue.Queue(QUEUE_DEPTH)
    source = io.BufferedReader(_QueueReader(pieces), PIECE)
    unpacking = asyncio.ensure_future(
        asyncio.to_thread(_unpack, source, workdir, encoding == "gzip")
    )
    try:
        # The body's chunks (64 KiB or less, as the server reads them) handed over a
        # piece at a time: a quarter as many hand-overs to the thread.
        gathered: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            if unpacking.done():
                break  # it failed early: the rest of the body does not matter
            gathered.append(chunk)
            size += len(chunk)
            if size >= PIECE:
                await _put(pieces, b"".join(gathered), unpacking)
                gathered, size = [], 0
        if gathered:
            await _put(pieces, b"".join(gathered), unpacking)
        await _put(pieces, None, unpacking)
        await unpacking
    except ClientDisconnect:
        # The controller went away mid-body (its store failed, its deadline passed):
        # nobody hears an answer; what was unpacked stays, as after any broken restore.
        return Response(status_code=400)
    except _REFUSED as exc:
        return _problem(422, "unsafe_archive", f"refused: {exc}")
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        return _problem(422, "invalid_archive", f"cannot unpack: {exc}")
    finally:
        if not unpacking.done():
            # The body broke off: end the reader so the thread finishes, then wait it.
            _drain_and_end(pieces)
            await asyncio.gather(unpacking, return_exceptions=True)
    return Response(status_code=204)


async def _put(
    pieces: queue.Queue[bytes | None], piece: bytes | None, unpacking: asyncio.Future[None]
) -> None:
    """Hand a piece to the tar thread, waiting for room, unless the thread has ended."""
    try:
        pieces.put_nowait(piece)  # room at once, the common case: no thread hop
        return
    except queue.Full:
        pass
    while not unpacking.done():
        try:
            # In a worker, as it may wait for room; a bounded wait, so that a thread
            # that ended (an unsafe member) is noticed.
            await asyncio.to_thread(pieces.put, piece, True, 0.5)
            return
        except queue.Full:
            continue
    await unpacking  # it ended: its error, or nothing if it finished


def _drain_and_end(pieces: queue.Queue[bytes | None]) -> None:
    while True:
        try:
            pieces.get_nowait()
        except queue.Empty:
            break
    pieces.put_nowait(None)
