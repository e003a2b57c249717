"""The README's minimal snapshot/restore implementation ("Suspend and resume: the
sandbox contract") works: the very block, run as a process, round trips a workspace
through the controller's snapshot client and refuses an archive that escapes."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sys
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from sandbox_controller.snapshots import FileStore, RestoreFailed, restore_snapshot, take_snapshot

from .eventually import eventually
from .snapshots.sandboxes import SECRET
from .snapshots.test_hook_client import tree, write_workspace
from .test_process import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
KEY = "sess-1/1.tar"


def readme_block() -> str:
    found = re.search(
        r"<!-- snapshot-hooks:begin -->\n```python\n(.*?)```\n<!-- snapshot-hooks:end -->",
        README.read_text(),
        re.DOTALL,
    )
    assert found, "the README's snapshot hooks block"
    return found.group(1)


@asynccontextmanager
async def readme_sandbox(tmp_path: Path, workspace: Path) -> AsyncIterator[str]:
    script = tmp_path / "snapshot_hooks.py"
    script.write_text(readme_block())
    port = free_port()
    env = os.environ | {
        "SANDBOX_CLAIM_SECRET": SECRET,
        "WORKSPACE": str(workspace),
        "PORT": str(port),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        address = f"127.0.0.1:{port}"

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, what="the README's sandbox listening")
        yield address
    finally:
        proc.terminate()
        await proc.wait()


async def test_the_readme_hooks_round_trip_a_workspace(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_workspace(first)
    store = FileStore(tmp_path / "archives")
    async with httpx.AsyncClient() as http:
        async with readme_sandbox(tmp_path, first) as address:
            await take_snapshot(http, address, SECRET, store, KEY, max_bytes=2**24, timeout=20)
        assert (await store.info(KEY)).encoding == "gzip"
        async with readme_sandbox(tmp_path, second) as address:
            await restore_snapshot(http, address, SECRET, store, KEY, timeout=20)
    assert tree(second) == tree(first)


async def test_the_readme_hooks_refuse_an_escaping_archive(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        escape = tarfile.TarInfo("../escaped")
        escape.size = 1
        tar.addfile(escape, io.BytesIO(b"x"))

    async def one_archive() -> AsyncIterator[bytes]:
        yield buffer.getvalue()

    store = FileStore(tmp_path / "archives")
    await store.put(KEY, one_archive(), max_bytes=2**20)
    (tmp_path / "ws").mkdir()
    async with httpx.AsyncClient() as http, readme_sandbox(tmp_path, tmp_path / "ws") as address:
        with pytest.raises(RestoreFailed) as refused:
            await restore_snapshot(http, address, SECRET, store, KEY, timeout=20)
    assert refused.value.reason == "hook_error" and "HTTP 422" in refused.value.detail
    assert not (tmp_path / "escaped").exists()
