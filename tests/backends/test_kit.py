"""The backends' shared kit: one term's event feed, its end marker, and resync."""

from __future__ import annotations

import asyncio

from sandbox_controller.backends.base import PodEvent, PodPhase, PodStatus
from sandbox_controller.backends.kit import EventFeed


def event(name: str, phase: PodPhase = PodPhase.PENDING) -> PodEvent:
    return PodEvent(PodStatus(name, phase))


async def drain(feed: EventFeed) -> list[str]:
    """Every event up to the end marker (a feed that never ends fails the test)."""
    return [e.pod.name async for e in feed.events()]


async def test_end_finishes_the_consumer_after_what_was_queued() -> None:
    feed = EventFeed()
    feed.begin()
    consumer = asyncio.create_task(asyncio.wait_for(drain(feed), 5))
    feed.put(event("a"))
    feed.put(event("b"))
    feed.end()
    assert await consumer == ["a", "b"]


async def test_events_outside_a_term_are_dropped_and_a_new_term_starts_empty() -> None:
    feed = EventFeed()
    feed.put(event("before"))  # not following yet
    feed.begin()
    feed.put(event("first-term"))
    feed.end()
    feed.put(event("after"))  # stopped: a standby keeps no backlog
    feed.begin()
    feed.put(event("second-term"))
    feed.end()
    assert await asyncio.wait_for(drain(feed), 5) == ["second-term"]


async def test_resync_drops_the_superseded_events_but_keeps_the_end() -> None:
    feed = EventFeed()
    feed.begin()
    feed.put(event("stale", PodPhase.PENDING))
    listed = [PodStatus("stale", PodPhase.READY)]
    assert feed.resync(listed) == listed
    feed.put(event("news"))
    feed.end()
    feed.resync([])  # after the end: the consumer is still told it ended
    assert await asyncio.wait_for(drain(feed), 5) == []
