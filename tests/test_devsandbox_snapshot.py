"""devsandbox's snapshot and restore hooks, over HTTP against a real process: the
workspace round trips into a fresh sandbox; a restore refuses every member that would
land outside the workspace (names, links, link chains), and unknown encodings."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from .snapshots.sandboxes import SECRET, devsandbox
from .snapshots.test_hook_client import tree, write_workspace

AUTH = {"authorization": f"Bearer {SECRET}"}
TAR = {"content-type": "application/x-tar"}


@pytest.fixture
async def fresh(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A sandbox with an empty workspace (tmp_path/work)."""
    (tmp_path / "work").mkdir()
    async with (
        devsandbox(tmp_path / "work") as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=20) as client,
    ):
        yield client


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


async def test_the_workspace_round_trips_into_a_fresh_sandbox(
    tmp_path: Path, fresh: httpx.AsyncClient
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    write_workspace(source)
    async with (
        devsandbox(source) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as old,
    ):
        taken = await old.post("/_sandbox/snapshot", headers=AUTH)
    assert taken.status_code == 200
    assert taken.headers["content-type"] == "application/x-tar"
    assert taken.headers["content-encoding"] == "gzip"
    raw = gzip.compress(taken.content)  # httpx decoded it: encode it again
    headers = AUTH | TAR | {"content-encoding": "gzip"}
    restored = await fresh.post("/_sandbox/restore", content=raw, headers=headers)
    assert restored.status_code == 204, restored.text
    assert tree(tmp_path / "work") == tree(source)


async def test_the_hooks_want_the_claim_secret(fresh: httpx.AsyncClient) -> None:
    assert (await fresh.post("/_sandbox/snapshot")).status_code == 401
    refused = await fresh.post("/_sandbox/restore", content=archive(file("a")), headers=TAR)
    assert refused.status_code == 401


@pytest.mark.parametrize(
    "members",
    [
        [file("../escaped")],
        [file("/tmp/absolute-escape")],
        [link("out", "/etc/passwd")],
        [link("out", "../../..")],
        [link("here", "."), link("out", "here/..")],  # a chain: lexically inside, not really
        [link("hard", "/etc/passwd", tarfile.LNKTYPE)],
    ],
    ids=["dotdot", "absolute", "symlink-absolute", "symlink-up", "symlink-chain", "hardlink"],
)
async def test_a_restore_refuses_members_that_leave_the_workspace(
    tmp_path: Path, fresh: httpx.AsyncClient, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    body = archive(*members, file("after-the-escape", b"never written"))
    refused = await fresh.post("/_sandbox/restore", content=body, headers=AUTH | TAR)
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "unsafe_archive"
    assert not (tmp_path / "work" / "after-the-escape").exists()
    assert not (tmp_path / "escaped").exists()


async def test_a_restore_refuses_what_it_cannot_unpack(fresh: httpx.AsyncClient) -> None:
    zstd = await fresh.post(
        "/_sandbox/restore", content=b"x", headers=AUTH | TAR | {"content-encoding": "zstd"}
    )
    assert (zstd.status_code, zstd.json()["error"]["code"]) == (415, "unsupported_encoding")
    other = await fresh.post("/_sandbox/restore", content=b"{}", headers=AUTH)
    assert other.status_code == 415
    garbage = await fresh.post(
        "/_sandbox/restore",
        content=b"not a tar" * 100,
        headers=AUTH | TAR | {"content-encoding": "gzip"},
    )
    assert (garbage.status_code, garbage.json()["error"]["code"]) == (422, "invalid_archive")


async def test_a_sandbox_never_claimed_answers_an_empty_archive(tmp_path: Path) -> None:
    async with devsandbox(tmp_path / "none-yet") as address, httpx.AsyncClient() as client:
        taken = await client.post(f"http://{address}/_sandbox/snapshot", headers=AUTH)
    assert taken.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(taken.content)) as tar:
        assert tar.getnames() == []
