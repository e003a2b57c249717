"""FileStore on a real directory: whole archives or none, the encoding beside them,
keys for the sweep and nothing else, deletes that tidy up."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox_controller.snapshots import ArchiveMissing, FileStore, SnapshotTooLarge
from sandbox_controller.snapshots.file_store import STALE_PART_AGE


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def read(store: FileStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_archives_round_trip_with_their_encoding(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    big = os.urandom(3 * 1024 * 1024 + 7)
    assert await store.put("s1/1.tar", pieces(big[:100], big[100:]), max_bytes=len(big)) == len(big)
    await store.put("s2/2.tar", pieces(b"gz"), max_bytes=10, encoding="gzip")
    assert await read(store, "s1/1.tar") == big
    assert (await store.info("s1/1.tar")).encoding is None
    assert (await store.info("s2/2.tar")).encoding == "gzip"
    assert await store.keys() == ["s1/1.tar", "s2/2.tar"]  # sidecars are no keys


async def test_a_put_over_the_limit_or_broken_off_leaves_no_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(SnapshotTooLarge):
        await store.put("s1/1.tar", pieces(b"x" * 600, b"x" * 600), max_bytes=1000)

    async def breaks() -> AsyncIterator[bytes]:
        yield b"half an archive"
        raise ConnectionResetError

    with pytest.raises(ConnectionResetError):
        await store.put("s1/2.tar", breaks(), max_bytes=1000, encoding="gzip")
    assert files(tmp_path) == []


async def test_delete_is_idempotent_and_removes_the_sessions_directory(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put("s1/1.tar", pieces(b"tar"), max_bytes=10, encoding="zstd")
    await store.delete("s1/1.tar")
    await store.delete("s1/1.tar")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ArchiveMissing):
        await read(store, "s1/1.tar")
    with pytest.raises(ArchiveMissing):
        await store.info("s1/1.tar")


async def test_the_sweeps_listing_removes_partials_a_crash_left(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    (tmp_path / "s1").mkdir()
    old, fresh = tmp_path / "s1" / ".part-1.tar.ab12", tmp_path / "s1" / ".part-2.tar.cd34"
    old.write_bytes(b"a crash's leftovers")
    fresh.write_bytes(b"a put under way")
    long_ago = time.time() - STALE_PART_AGE - 60
    os.utime(old, (long_ago, long_ago))
    assert await store.keys() == []
    assert files(tmp_path) == ["s1/.part-2.tar.cd34"]


@pytest.mark.parametrize("key", ["../x.tar", "/abs.tar", "s1/.hidden", "a//b", "", "s1/x y"])
async def test_keys_that_are_not_plain_names_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        await FileStore(tmp_path).put(key, pieces(b"x"), max_bytes=10)
