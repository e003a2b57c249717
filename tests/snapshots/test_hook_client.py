"""take_snapshot and restore_snapshot against real sandboxes over HTTP: devsandbox for
the round trip, raw servers for each way a snapshot hook can fail. The store is a
FileStore here (S3 in test_s3_store.py); after every failure, nothing is left in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandbox_controller.snapshots import (
    FileStore,
    RestoreFailed,
    SnapshotFailed,
    restore_snapshot,
    take_snapshot,
)

from .sandboxes import SECRET, answering, devsandbox, read_head, tar_stream, tcp_server

KEY = "sess-1/1700000000000.tar"
MAX = 1024 * 1024


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "archives")


def write_workspace(root: Path) -> None:
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hello')\n")
    (root / "src" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (root / "notes.md").write_text("lunch, then back\n")
    (root / "link-to-notes").symlink_to("notes.md")


def tree(root: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = "-> " + str(path.readlink())
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
async def test_a_workspace_comes_back_whole_in_a_fresh_sandbox(
    tmp_path: Path, http: httpx.AsyncClient, store: FileStore, encoding: str
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    write_workspace(first)
    args = ("--snapshot-encoding", encoding)
    async with devsandbox(first, *args) as address:
        size = await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    info = await store.info(KEY)
    assert info.size == size > 0
    assert info.encoding == (None if encoding == "identity" else "gzip")

    async with devsandbox(second, *args) as address:
        await restore_snapshot(http, address, SECRET, store, KEY, timeout=10)
    assert tree(second) == tree(first)
    assert await store.keys() == [KEY]  # a restore keeps the archive


async def test_a_sandbox_without_the_hooks_cannot_be_suspended(
    tmp_path: Path, http: httpx.AsyncClient, store: FileStore
) -> None:
    async with devsandbox(tmp_path, "--no-hooks") as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
        assert failed.value.reason == "not_supported"
        await store.put(KEY, _chunks(b"x"), max_bytes=MAX)
        with pytest.raises(RestoreFailed) as refused:
            await restore_snapshot(http, address, SECRET, store, KEY, timeout=10)
        assert refused.value.reason == "not_supported"


async def test_a_hook_error_is_said_with_the_sandboxes_words(
    http: httpx.AsyncClient, store: FileStore
) -> None:
    async with tcp_server(answering(500, b"disk on fire\n")) as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert failed.value.reason == "hook_error"
    assert failed.value.detail == "HTTP 500: disk on fire"
    assert await store.keys() == []


async def test_a_hook_that_answers_something_else_than_a_tar_fails(
    http: httpx.AsyncClient, store: FileStore
) -> None:
    async with tcp_server(answering(200, b"{}", "content-type: application/json\r\n")) as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert failed.value.reason == "hook_error" and "not a tar" in failed.value.detail


async def test_a_hung_hook_fails_at_the_snapshot_timeout_and_leaves_nothing(
    http: httpx.AsyncClient, store: FileStore, tmp_path: Path
) -> None:
    async with tcp_server(tar_stream(3 * 65536, hang_after=True)) as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=0.5)
    assert failed.value.reason == "timeout"
    assert await store.keys() == []
    assert [p for p in (tmp_path / "archives").rglob("*") if p.is_file()] == []


async def test_an_archive_over_the_limit_fails_and_leaves_nothing(
    http: httpx.AsyncClient, store: FileStore, tmp_path: Path
) -> None:
    async with tcp_server(tar_stream(MAX + 1)) as address:
        with pytest.raises(SnapshotFailed) as streamed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    async with tcp_server(tar_stream(MAX + 1, declared=MAX + 1)) as address:
        with pytest.raises(SnapshotFailed) as declared:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert streamed.value.reason == declared.value.reason == "too_large"
    assert [p for p in (tmp_path / "archives").rglob("*") if p.is_file()] == []


async def test_an_archive_broken_off_midway_fails_and_leaves_nothing(
    http: httpx.AsyncClient, store: FileStore
) -> None:
    async def breaks_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-tar\r\n"
            b"content-length: 100000\r\n\r\n" + b"t" * 5000
        )
        await writer.drain()
        writer.close()

    async with tcp_server(breaks_off) as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert failed.value.reason == "hook_error"
    assert await store.keys() == []


async def test_a_store_that_cannot_write_is_store_unavailable(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the store's root should be")
    store = FileStore(tmp_path / "not-a-dir")
    tmp_path.joinpath("ws").mkdir()
    async with devsandbox(tmp_path / "ws") as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert failed.value.reason == "store_unavailable"


async def test_a_restore_refused_or_missing_says_why(
    tmp_path: Path, http: httpx.AsyncClient, store: FileStore
) -> None:
    async with tcp_server(answering(500, b"no room")) as address:
        await store.put(KEY, _chunks(b"tar"), max_bytes=MAX)
        with pytest.raises(RestoreFailed) as refused:
            await restore_snapshot(http, address, SECRET, store, KEY, timeout=10)
        with pytest.raises(RestoreFailed) as missing:
            await restore_snapshot(http, address, SECRET, store, "sess-2/1.tar", timeout=10)
    assert refused.value.reason == "hook_error" and "no room" in refused.value.detail
    assert missing.value.reason == "archive_missing"
    assert await store.keys() == [KEY]  # a failed restore keeps the archive


async def _chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_a_declared_encoding_is_kept_and_given_back_as_declared(
    http: httpx.AsyncClient, store: FileStore
) -> None:
    body = b"(zstd frames, opaque to the controller)"
    headers = "content-type: application/x-tar\r\ncontent-encoding: zstd\r\n"
    async with tcp_server(answering(200, body, headers)) as address:
        size = await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert size == len(body) and (await store.info(KEY)).encoding == "zstd"

    received: list[bytes] = []

    async def takes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        received.append(head + await reader.readexactly(len(body)))
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async with tcp_server(takes) as address:
        await restore_snapshot(http, address, SECRET, store, KEY, timeout=10)
    head, _, sent = received[0].partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == "post /_sandbox/restore http/1.1"
    assert {"content-encoding: zstd", "content-type: application/x-tar"} <= set(lines)
    assert f"content-length: {len(body)}" in lines and f"authorization: bearer {SECRET}" in lines
    assert sent == body


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (401, "content-type: application/json\r\n"),
        (200, "content-type: application/x-tar\r\ncontent-encoding: br\r\n"),
    ],
    ids=["wrong-secret", "undeclared-encoding"],
)
async def test_an_answer_that_is_not_an_allowed_archive_is_a_hook_error(
    http: httpx.AsyncClient, store: FileStore, status: int, headers: str
) -> None:
    async with tcp_server(answering(status, b"...", headers)) as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert failed.value.reason == "hook_error"
    assert await store.keys() == []


async def test_a_refusal_that_echoes_the_claim_secret_is_quoted_without_it(
    http: httpx.AsyncClient, store: FileStore
) -> None:
    echo = f"bad request: Authorization: Bearer {SECRET}".encode()
    async with tcp_server(answering(400, echo)) as address:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=MAX, timeout=10)
    assert failed.value.detail.startswith("HTTP 400: bad request")
    assert SECRET not in failed.value.detail
