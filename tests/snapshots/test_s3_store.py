"""S3Store against a real S3-compatible server process over HTTP (tests/s3server.py):
small and multipart archives round trip with their encoding; too large, a failing
source, and the server SIGKILLed in the middle of an upload leave no object and no
open upload; the hook client over S3 with a devsandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiobotocore.session import get_session

from sandbox_controller.snapshots import (
    ArchiveMissing,
    RestoreFailed,
    S3Store,
    SnapshotFailed,
    SnapshotTooLarge,
    StoreUnavailable,
    restore_snapshot,
    take_snapshot,
)
from sandbox_controller.snapshots.s3_store import PART_SIZE

from ..eventually import eventually
from ..s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, s3_server
from .sandboxes import SECRET, devsandbox
from .test_hook_client import tree, write_workspace

BUCKET = "sandbox-archives"
KEY = "sess-1/1700000000000.tar"


@pytest.fixture
def server() -> Iterator[S3Server]:
    with s3_server() as running:
        yield running


def raw_client(server: S3Server):  # type: ignore[no-untyped-def]
    return get_session().create_client(
        "s3",
        endpoint_url=server.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )


@pytest.fixture
async def store(server: S3Server) -> AsyncIterator[S3Store]:
    async with raw_client(server) as s3:
        await s3.create_bucket(Bucket=BUCKET)
    store = S3Store(
        BUCKET,
        "archives/",
        endpoint_url=server.endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
        connect_timeout=1,
        read_timeout=5,
    )
    yield store
    await store.close()


async def pattern(size: int, piece: int = 65536) -> AsyncIterator[bytes]:
    """``size`` bytes whose every piece differs, so a misplaced part shows."""
    sent = 0
    while sent < size:
        n = min(piece, size - sent)
        yield (sent // piece).to_bytes(4, "big") * (n // 4) + b"\0" * (n % 4)
        sent += n


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def _has_uploads(server: S3Server) -> bool:
    return bool(await open_uploads(server))


async def open_uploads(server: S3Server) -> list[object]:
    async with raw_client(server) as s3:
        listed = await s3.list_multipart_uploads(Bucket=BUCKET)
    return list(listed.get("Uploads", []))


@pytest.mark.parametrize(
    "size", [0, 1000, 2 * PART_SIZE + 12345], ids=["empty", "small", "multipart"]
)
async def test_an_archive_round_trips_with_its_encoding(store: S3Store, size: int) -> None:
    assert await store.put(KEY, pattern(size), max_bytes=10 * PART_SIZE, encoding="gzip") == size
    info = await store.info(KEY)
    assert (info.size, info.encoding) == (size, "gzip")
    assert await collect(store.get(KEY)) == await collect(pattern(size))
    assert await store.keys() == [KEY]

    await store.delete(KEY)
    await store.delete(KEY)  # idempotent
    assert await store.keys() == []
    with pytest.raises(ArchiveMissing):
        await store.info(KEY)
    with pytest.raises(ArchiveMissing):
        await collect(store.get(KEY))


async def test_too_large_leaves_no_object_and_no_open_upload(
    store: S3Store, server: S3Server
) -> None:
    with pytest.raises(SnapshotTooLarge):
        await store.put(KEY, pattern(3 * PART_SIZE), max_bytes=2 * PART_SIZE + 1)
    assert await store.keys() == []
    assert await open_uploads(server) == []


async def test_a_source_that_fails_midway_leaves_nothing(store: S3Store, server: S3Server) -> None:
    async def breaks() -> AsyncIterator[bytes]:
        async for chunk in pattern(PART_SIZE + 1):
            yield chunk
        raise httpx.RemoteProtocolError("the sandbox hung up")

    with pytest.raises(httpx.RemoteProtocolError):
        await store.put(KEY, breaks(), max_bytes=10 * PART_SIZE)
    assert await store.keys() == []
    assert await open_uploads(server) == []


async def test_the_store_killed_mid_upload_is_store_unavailable(
    store: S3Store, server: S3Server
) -> None:
    async def kills_after_a_part() -> AsyncIterator[bytes]:
        async for chunk in pattern(PART_SIZE + 65536):
            yield chunk
        server.kill()
        async for chunk in pattern(PART_SIZE):
            yield chunk

    with pytest.raises(StoreUnavailable) as down:
        await store.put(KEY, kills_after_a_part(), max_bytes=10 * PART_SIZE)
    print(down.value)
    with pytest.raises(StoreUnavailable):
        await store.keys()


async def test_a_snapshot_whose_store_dies_mid_upload_fails_store_unavailable(
    tmp_path: Path, store: S3Store, server: S3Server
) -> None:
    (tmp_path / "big.bin").write_bytes(await collect(pattern(4 * PART_SIZE)))

    async def kill_once_uploading() -> None:
        await eventually(lambda: _has_uploads(server), what="an upload under way", every=0.01)
        server.kill()

    async with devsandbox(tmp_path, "--snapshot-encoding", "identity") as address:
        async with httpx.AsyncClient() as http:
            killer = asyncio.create_task(kill_once_uploading())
            with pytest.raises(SnapshotFailed) as failed:
                await take_snapshot(
                    http, address, SECRET, store, KEY, max_bytes=8 * PART_SIZE, timeout=30
                )
            await killer
    assert failed.value.reason == "store_unavailable"


async def test_the_store_down_from_the_start_fails_the_snapshot(
    tmp_path: Path, store: S3Store, server: S3Server
) -> None:
    server.kill()
    async with devsandbox(tmp_path) as address, httpx.AsyncClient() as http:
        with pytest.raises(SnapshotFailed) as failed:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=PART_SIZE, timeout=30)
    assert failed.value.reason == "store_unavailable"


async def test_a_workspace_round_trips_through_s3(tmp_path: Path, store: S3Store) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    write_workspace(first)
    (first / "big.bin").write_bytes(await collect(pattern(PART_SIZE + 5)))
    async with httpx.AsyncClient() as http:
        async with devsandbox(first, "--snapshot-encoding", "identity") as address:
            await take_snapshot(
                http, address, SECRET, store, KEY, max_bytes=4 * PART_SIZE, timeout=30
            )
        async with devsandbox(second) as address:
            await restore_snapshot(http, address, SECRET, store, KEY, timeout=30)
    assert tree(second) == tree(first)


async def test_the_sweeps_listing_aborts_uploads_a_crash_left_open(
    store: S3Store, server: S3Server
) -> None:
    async with raw_client(server) as s3:
        await s3.create_multipart_upload(Bucket=BUCKET, Key="archives/crashed/1.tar")
    # moto dates every upload 2010-11-10, so this one is past STALE_UPLOAD_AGE; that a
    # young one (a put under way) is kept is not seen against moto.
    assert len(await open_uploads(server)) == 1
    assert await store.keys() == []
    assert await open_uploads(server) == []


async def test_a_store_killed_mid_restore_fails_it_store_unavailable(
    tmp_path: Path, store: S3Store, server: S3Server
) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    (source / "big.bin").write_bytes(await collect(pattern(8 * PART_SIZE)))
    async with httpx.AsyncClient() as http:
        async with devsandbox(source, "--snapshot-encoding", "identity") as address:
            await take_snapshot(
                http, address, SECRET, store, KEY, max_bytes=16 * PART_SIZE, timeout=60
            )

        def restoring() -> bool:
            landed = target / "big.bin"
            return landed.exists() and landed.stat().st_size > 0

        async def kill_once_restoring() -> None:
            await eventually(restoring, what="the restore under way", every=0.005)
            server.kill()

        async with devsandbox(target) as address:
            killer = asyncio.create_task(kill_once_restoring())
            with pytest.raises(RestoreFailed) as failed:
                await restore_snapshot(http, address, SECRET, store, KEY, timeout=60)
            await killer
    print(failed.value)
    assert failed.value.reason == "store_unavailable"
