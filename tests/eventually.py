"""The one way tests wait for state they do not drive: another process, a real server,
kubesim's simulated kubelet. Time the code under test reads comes from a ManualClock
instead; polling in place of advancing that clock hides the very timing a test is for.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

Check = Callable[[], bool | Awaitable[bool]]


async def eventually(
    check: Check, *, within: float = 10.0, what: str = "", every: float = 0.02
) -> None:
    """Return once ``check()`` (sync or async) is true; fail after ``within`` seconds,
    naming ``what`` was awaited. An exception from ``check`` ends the wait at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"waited {within:g}s for {what or describe(check)}")
        await asyncio.sleep(every)


def describe(check: Check) -> str:
    """The check's own source line (a lambda says what it waits for) or its name."""
    try:
        return inspect.getsource(check).strip()
    except (OSError, TypeError):
        return getattr(check, "__qualname__", repr(check))
