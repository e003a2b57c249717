"""Docker's event stream, followed for as long as the backend runs.

Each event about one of our containers is handed on by name; the stream's end or
failure, or a daemon restart, is a gap, and after any gap the caller relists (with
backoff while the Engine is away) and the stream resumes from when that list began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import aiohttp
from aiodocker.events import DockerEvents

from ..aiotime import Backoff, sleep_or_stop
from ..clock import Clock

log = logging.getLogger(__name__)

# What a lost or broken connection to the Engine raises.
CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)
# Health checks run as execs: their events are noise here.
IGNORED_ACTIONS = ("exec_", "attach", "resize", "top", "export", "commit", "copy", "archive")

OnEvent = Callable[[str, str], Awaitable[None]]  # (action, container name)


def event_subject(event: Any) -> tuple[str, str] | None:
    """The action and container name of an event worth reading, or None."""
    action = str(event.get("Action") or event.get("status") or "")
    if action.startswith(IGNORED_ACTIONS):
        return None
    name = str((event.get("Actor") or {}).get("Attributes", {}).get("name") or "")
    return (action, name) if name else None


async def follow_events(
    docker: aiodocker.Docker,
    filters: str,
    since: float,
    on_event: OnEvent,
    relist: Callable[[], Awaitable[float]],
    *,
    backoff: Backoff,
    clock: Clock,
    closing: asyncio.Event,
) -> None:
    """Docker's event stream, from ``since`` on; after any gap, ``relist`` (which
    returns when its list began). Returns once ``closing`` is set."""
    failures = 0
    while True:
        events = DockerEvents(docker)  # type: ignore[no-untyped-call]
        try:
            subscriber = events.subscribe(  # type: ignore[no-untyped-call]
                filters=filters, since=str(int(since) - 1)
            )
            while (event := await subscriber.get()) is not None:
                failures = 0
                subject = event_subject(event)
                if subject is not None:
                    await on_event(*subject)
            log.info("docker event stream ended; relisting")
        except (aiodocker.DockerError, *CONNECTION_ERRORS) as exc:
            log.info("docker event stream failed (%s); relisting", exc)
        finally:
            with contextlib.suppress(aiodocker.DockerError, *CONNECTION_ERRORS):
                await events.stop()  # type: ignore[no-untyped-call]
        while True:
            delay = backoff.delay(failures)
            failures += 1
            if await sleep_or_stop(clock, delay, closing):
                return
            try:
                since = await relist()
                break
            except (aiodocker.DockerError, *CONNECTION_ERRORS) as exc:
                log.info("docker relist failed (%s); again in a moment", exc)
