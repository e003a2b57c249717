"""Lifecycle webhooks: a signed POST to ``SANDBOX_WEBHOOK_URL`` when a session ends
(README "Webhooks").

The leader's scheduler hands each committed state change to ``Webhooks.offer``, which
only queues it (bounded: when full, the event is dropped and counted), so the loop
never waits on a receiver. One task delivers the queue in order, each event retried
with backoff until the receiver answers 2xx or the attempts run out.

Each delivery is signed: ``X-Sandbox-Signature: v1=<hex>``, the HMAC-SHA256 under
``SANDBOX_WEBHOOK_SECRET`` of ``<X-Sandbox-Timestamp>.<body>``, so a receiver can tell
ours from a forgery and refuse a replay of an old one (``verify``).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable

import httpx

from .aiotasks import TaskGroup
from .aiotime import Backoff, sleep_or_stop
from .clock import Clock
from .model import AuditAction, AuditEvent

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sandbox-Signature"
TIMESTAMP_HEADER = "X-Sandbox-Timestamp"
ID_HEADER = "X-Sandbox-Webhook-Id"
# A receiver should refuse a delivery signed longer ago than this (a replay).
VERIFY_TOLERANCE = 300.0
# Between attempts at one delivery: 1 s doubling to 60 s, with jitter.
RETRY_BACKOFF = Backoff(1.0, 60.0)


class WebhookType(enum.StrEnum):
    """The ``type`` of a delivery; the three have the same body."""

    SESSION_ENDED = "session.ended"
    SESSION_SUSPENDED = "session.suspended"
    SESSION_RESUMED = "session.resumed"


_ENDINGS = frozenset(
    {AuditAction.END, AuditAction.RECLAIM, AuditAction.IDLE_TIMEOUT, AuditAction.DELETE}
)


def webhook_type(event: AuditEvent) -> WebhookType | None:
    """The webhook an audit event calls for, if any."""
    if event.action in _ENDINGS:
        return WebhookType.SESSION_ENDED
    if event.action == AuditAction.SUSPEND:
        return WebhookType.SESSION_SUSPENDED
    if event.action == AuditAction.RESUME:
        return WebhookType.SESSION_RESUMED
    return None


Outcome = str  # "delivered", "failed" (one attempt), "given_up", "dropped" (queue full)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = VERIFY_TOLERANCE,
) -> bool:
    """What a receiver checks: the signature is ours over this timestamp and body,
    and the timestamp is recent (so a recorded delivery cannot be replayed later)."""
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return False
    expected = sign(secret, timestamp, body)
    return age <= tolerance and hmac.compare_digest(expected.encode(), signature.encode())


def body_of(kind: WebhookType, event: AuditEvent, delivery_id: str) -> bytes:
    document = {
        "id": delivery_id,
        "type": kind.value,
        "at": event.at,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "org_id": event.org_id,
        "reason": event.reason,
        "caller": event.caller,
    }
    return json.dumps(document, separators=(",", ":")).encode()


class Webhooks:
    """The bounded queue of deliveries and the task that sends them."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        clock: Clock,
        *,
        queue_max: int = 1000,
        max_attempts: int = 8,
        timeout: float = 5.0,
        backoff: Backoff = RETRY_BACKOFF,
        observe: Callable[[Outcome], None] = lambda outcome: None,
    ) -> None:
        self.url = url
        self._secret = secret
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.observe = observe
        self._queue: asyncio.Queue[tuple[WebhookType, AuditEvent]] = asyncio.Queue(queue_max)
        self._stop = asyncio.Event()
        self._tasks = TaskGroup("webhooks")
        self._client: httpx.AsyncClient | None = None

    def offer(self, event: AuditEvent) -> None:
        """Queue the webhook this event calls for, if any. Never waits: a full queue
        drops the event (counted as ``dropped``) rather than hold up the caller."""
        kind = webhook_type(event)
        if kind is None:
            return
        try:
            self._queue.put_nowait((kind, event))
        except asyncio.QueueFull:
            log.warning("webhook queue full; dropped %s of session %s", kind, event.session_id)
            self.observe("dropped")

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        self._tasks.start(self._run(), "deliver")

    async def stop(self, grace: float = 2.0) -> None:
        """Deliver what is queued for up to ``grace`` seconds, then stop."""
        if self._client is None:
            return
        try:
            async with asyncio.timeout(grace):
                await self._queue.join()
        except TimeoutError:
            log.warning("stopping with %d webhook(s) undelivered", self._queue.qsize())
        self._stop.set()
        await self._tasks.stop()
        await self._client.aclose()
        self._client = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            kind, event = await self._queue.get()
            try:
                await self._deliver(kind, event)
            finally:
                self._queue.task_done()

    async def _deliver(self, kind: WebhookType, event: AuditEvent) -> None:
        delivery_id = uuid.uuid4().hex
        body = body_of(kind, event, delivery_id)
        for attempt in range(self.max_attempts):
            status = await self._post(body, delivery_id)
            if status is not None and 200 <= status < 300:
                self.observe("delivered")
                return
            self.observe("failed")
            if attempt + 1 < self.max_attempts:
                delay = self.backoff.delay(attempt)
                if await sleep_or_stop(self.clock, delay, self._stop):
                    return
        log.warning(
            "webhook %s of session %s given up after %d attempts",
            kind,
            event.session_id,
            self.max_attempts,
        )
        self.observe("given_up")

    async def _post(self, body: bytes, delivery_id: str) -> int | None:
        assert self._client is not None
        timestamp = str(int(self.clock.now()))
        headers = {
            "content-type": "application/json",
            ID_HEADER: delivery_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            # Only the status is read: a receiver's body is never taken in.
            async with self._client.stream("POST", self.url, content=body, headers=headers) as r:
                return r.status_code
        except httpx.HTTPError as exc:
            log.info("webhook to %s failed: %s", self.url, type(exc).__name__)
            return None
