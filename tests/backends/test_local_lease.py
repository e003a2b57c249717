"""The local backend under the write guard: no sandbox process is spawned or killed
once the lease may have ended; `dev` still stops what it owns when it exits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox_controller.backends.base import LeaseLost
from sandbox_controller.backends.local import LocalBackend


class Lease:
    def __init__(self) -> None:
        self.held = True

    def __call__(self) -> None:
        if not self.held:
            raise LeaseLost()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_no_spawn_and_no_kill_without_the_lease(tmp_path: Path) -> None:
    lease = Lease()
    backend = LocalBackend(tmp_path, stop_on_close=True, write_guard=lease)
    await backend.start()
    try:
        name = await backend.create_pod({})
        [pid] = [p.pid for p in backend._procs.values()]
        lease.held = False

        with pytest.raises(LeaseLost):
            await backend.create_pod({})
        with pytest.raises(LeaseLost):
            await backend.delete_pod(name)

        assert [s.name for s in await backend.resync()] == [name]
        assert alive(pid)
    finally:
        await backend.close()  # dev's exit: stops its own sandboxes, lease or not
    assert not alive(pid)
