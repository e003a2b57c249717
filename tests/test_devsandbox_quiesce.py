"""devsandbox's quiesce (devsandbox_quiesce.py): from its snapshot on it serves its
hooks and health check only. A write in progress when the snapshot is asked for is
answered, and is in the archive; every request after is answered 503 with
X-Sandbox-Suspending: 1 and left untouched; a WebSocket upgrade too; an answer that
comes only once the packing began is a plain 503, never a success."""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from sandbox_controller import devsandbox_quiesce
from sandbox_controller.devsandbox import build_app

from .snapshots.sandboxes import SECRET, devsandbox

AUTH = {"authorization": f"Bearer {SECRET}"}


def names(archive: bytes) -> set[str]:
    """The members of an answer's archive (httpx has undone its gzip already)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return set(tar.getnames())


async def held_body(release: asyncio.Event) -> AsyncIterator[bytes]:
    yield b"first half, "
    await release.wait()
    yield b"second half"


async def test_a_write_in_progress_is_kept_and_later_ones_are_refused_untouched(
    tmp_path: Path,
) -> None:
    async with (
        devsandbox(tmp_path) as address,
        httpx.AsyncClient(base_url=f"http://{address}", timeout=20) as client,
    ):
        release = asyncio.Event()
        in_progress = asyncio.create_task(client.put("/files/slow.txt", content=held_body(release)))
        await asyncio.sleep(0.2)  # its head and first half are in
        snapshot = asyncio.create_task(client.post("/_sandbox/snapshot", headers=AUTH))
        await asyncio.sleep(0.2)  # the snapshot waits for the write in progress

        refused = await client.put("/files/late.txt", content=b"after the snapshot")
        assert refused.status_code == 503
        assert refused.headers["x-sandbox-suspending"] == "1"
        assert refused.json()["error"]["code"] == "sandbox_suspending"
        assert not (tmp_path / "late.txt").exists()  # untouched
        assert (await client.get("/healthz")).status_code == 200
        with pytest.raises(InvalidStatus) as upgrade:
            async with connect(f"ws://{address}/ws", proxy=None):
                pass
        assert upgrade.value.response.status_code == 503
        assert not snapshot.done()

        release.set()
        assert (await in_progress).status_code == 204  # answered, and so kept
        answer = await snapshot
        assert answer.status_code == 200
        assert names(answer.content) == {"slow.txt"}
        again = await client.post("/_sandbox/snapshot", headers=AUTH)  # a new leader's
        assert again.status_code == 200 and names(again.content) == {"slow.txt"}


async def test_an_answer_after_the_packing_began_is_a_plain_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devsandbox_quiesce, "DRAIN_SECONDS", 0.1)
    app = build_app(SECRET, tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        release = asyncio.Event()
        slow = asyncio.create_task(client.put("/files/slow.txt", content=held_body(release)))
        await asyncio.sleep(0.05)
        answer = await client.post("/_sandbox/snapshot", headers=AUTH)  # did not wait
        assert answer.status_code == 200 and names(answer.content) == set()
        release.set()
        late = await slow
        assert late.status_code == 503 and "x-sandbox-suspending" not in late.headers
        assert late.json()["error"]["code"] == "sandbox_suspending"


async def test_a_stream_already_answered_does_not_hold_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devsandbox_quiesce, "DRAIN_SECONDS", 600.0)  # a hang, if waited for
    transport = httpx.ASGITransport(app=build_app(SECRET, tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        events = asyncio.create_task(client.get("/events?n=1000&interval=0.5"))
        await asyncio.sleep(0.1)  # its status and first event are out
        answer = await asyncio.wait_for(client.post("/_sandbox/snapshot", headers=AUTH), 60)
        assert answer.status_code == 200
        assert not events.done()
        events.cancel()
