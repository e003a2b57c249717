"""Lifecycle webhooks against a real HTTP receiver: signed, retried with backoff until
a failing receiver recovers, bounded, and sent when a session really ends."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from sandbox_controller.aiotime import Backoff
from sandbox_controller.clock import ManualClock
from sandbox_controller.model import AuditEvent
from sandbox_controller.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Webhooks,
    WebhookType,
    verify,
)

from .conftest import ControllerFactory
from .eventually import eventually

START = 2_000_000_000.0
SECRET = "webhook-signing-secret"


@dataclass
class Receiver:
    url: str = ""
    # Status to answer each delivery with, in order; 204 once they run out.
    answers: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hang: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((dict(request.headers), body))
        if self.hang is not None:
            await self.hang.wait()
        status = self.answers.pop(0) if self.answers else 204
        return web.Response(status=status)

    def documents(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    found.url = f"http://127.0.0.1:{port}/hook"
    yield found
    if found.hang is not None:
        found.hang.set()
    await runner.cleanup()


def ended(session_id: str, reason: str = "idle_timeout") -> AuditEvent:
    return AuditEvent(
        "idle_timeout", "controller", START, session_id=session_id, user_id="ada", reason=reason
    )


def signature_ok(headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, written from the README, not from webhooks.py."""
    timestamp = headers[TIMESTAMP_HEADER]
    mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(headers[SIGNATURE_HEADER], "v1=" + mac.hexdigest())


async def test_a_session_that_ends_is_posted_signed_to_the_receiver(
    start_controller: ControllerFactory, receiver: Receiver
) -> None:
    clock = ManualClock(start=START)
    ctl = await start_controller(
        clock=clock, webhook_url=receiver.url, webhook_secret=SECRET, hooks=False
    )
    await ctl.wait_idle_pods(1)
    session = (await ctl.open("ada", "t1")).json()
    assert receiver.got == []  # an open is no webhook
    assert (await ctl.client.delete(f"/sessions/{session['id']}")).status_code == 204

    await eventually(lambda: len(receiver.got) == 1, within=15, what="the webhook")
    headers, body = receiver.got[0]
    document = json.loads(body)
    assert document["type"] == WebhookType.SESSION_ENDED == "session.ended"
    assert (document["session_id"], document["user_id"]) == (session["id"], "ada")
    assert document["reason"] == "deleted" and document["at"] == pytest.approx(START, abs=1)
    assert signature_ok(headers, body)
    assert verify(
        SECRET.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], START
    )
    # Tampered, signed with another key, or replayed an hour later: refused.
    assert not verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER], START)  # fmt: skip
    assert not verify(b"other", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], START)
    assert not verify(SECRET.encode(), headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER], START + 3600)  # fmt: skip
    metrics = (await ctl.client.get("/metrics")).text
    assert 'sandbox_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


async def test_a_failing_receiver_is_retried_with_backoff_until_it_recovers(
    receiver: Receiver,
) -> None:
    clock = ManualClock(start=START)
    outcomes: list[str] = []
    receiver.answers = [503, 500]
    hooks = Webhooks(
        receiver.url,
        SECRET.encode(),
        clock,
        backoff=Backoff(1.0, 60.0, jitter=False),
        observe=outcomes.append,
    )
    hooks.start()
    try:
        hooks.offer(ended("s1"))
        await clock.until_sleeping()
        assert outcomes == ["failed"] and len(receiver.got) == 1
        clock.advance(0.5)  # the first backoff is 1 s: no attempt before it
        assert clock.sleepers == 1 and len(receiver.got) == 1
        clock.advance(0.5)
        await eventually(lambda: outcomes == ["failed", "failed"], within=5, what="2nd try")
        await clock.until_sleeping()
        clock.advance(2.0)  # then 2 s
        await eventually(lambda: outcomes[-1] == "delivered", within=5, what="delivery")
        assert outcomes == ["failed", "failed", "delivered"]
        ids = {headers["X-Sandbox-Webhook-Id"] for headers, _ in receiver.got}
        assert len(ids) == 1  # the same delivery each time: a receiver can dedupe
        assert all(signature_ok(h, b) for h, b in receiver.got)
    finally:
        await hooks.stop()


async def test_a_receiver_down_for_good_is_given_up_and_the_next_event_still_goes(
    receiver: Receiver,
) -> None:
    clock = ManualClock(start=START)
    outcomes: list[str] = []
    receiver.answers = [500, 500]
    hooks = Webhooks(receiver.url, SECRET.encode(), clock, max_attempts=2, observe=outcomes.append)
    hooks.start()
    try:
        hooks.offer(ended("lost"))
        hooks.offer(ended("next"))
        await clock.until_sleeping()
        clock.advance(60)
        await eventually(lambda: "delivered" in outcomes, within=5, what="the next event")
        assert outcomes == ["failed", "failed", "given_up", "delivered"]
        assert [d["session_id"] for d in receiver.documents()] == ["lost", "lost", "next"]
    finally:
        await hooks.stop()


async def test_a_full_queue_drops_events_and_never_makes_the_caller_wait(
    receiver: Receiver,
) -> None:
    clock = ManualClock(start=START)
    outcomes: list[str] = []
    receiver.hang = asyncio.Event()  # the receiver holds the first delivery
    hooks = Webhooks(
        receiver.url, SECRET.encode(), clock, queue_max=2, timeout=30, observe=outcomes.append
    )
    hooks.start()
    try:
        hooks.offer(ended("a"))
        await eventually(lambda: len(receiver.got) == 1, within=5, what="the first delivery")
        for name in ("b", "c", "d", "e"):
            hooks.offer(ended(name))  # returns at once, the receiver still hanging
        assert outcomes == ["dropped", "dropped"]
        receiver.hang.set()
        await eventually(lambda: outcomes.count("delivered") == 3, within=5, what="the rest")
        assert [d["session_id"] for d in receiver.documents()] == ["a", "b", "c"]
    finally:
        await hooks.stop()


def test_only_endings_call_for_a_webhook() -> None:
    opened = AuditEvent("open", "x", START, session_id="s")
    claimed = AuditEvent("claim", "x", START, session_id="s")
    hooks = Webhooks("http://127.0.0.1:9/", b"k", ManualClock(start=START), queue_max=1)
    hooks.offer(opened)
    hooks.offer(claimed)
    hooks.offer(ended("s"))
    assert hooks._queue.qsize() == 1
