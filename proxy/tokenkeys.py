"""The keys that verify session tokens, asked of the controller.

``GET /internal/token-keys`` with the proxy's own credential answers the public keys
(tokens.py); the proxy never holds the secret that signs. Asked once at start-up, again
until the controller answers, then every ``REFRESH`` seconds, so a changed
``SANDBOX_TOKEN_SECRET`` reaches every proxy within a minute. Asking adds no trust: the
controller already decides where every session's traffic goes.

A token naming a key id the proxy has not learnt (a controller signing with a new
secret since the last refresh) makes it ask at once (``learn``), so a rotation never
turns a valid token away for a minute. At most once per ``ON_DEMAND_GAP``: a request
that comes sooner waits for the next call (never a 401 for a real new key), and every
request waiting shares the one call, so made-up key ids cannot flood the controller.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx

from sandbox_controller.aiotime import Backoff
from sandbox_controller.clock import Clock

from .auth import Verifier

log = logging.getLogger(__name__)


class TokenKeyFetcher:
    REFRESH = 60.0
    RETRY = Backoff(base=0.1, cap=5.0)
    # A few keys of 43 characters each: anything longer is not the controller's answer.
    MAX_ANSWER = 16 * 1024
    DEADLINE = 10.0
    # Made-up key ids cost the controller at most one call this often.
    ON_DEMAND_GAP = 1.0
    ON_DEMAND_DEADLINE = 2.0

    def __init__(
        self,
        client: httpx.AsyncClient,
        controller_url: str,
        credential: str | None,
        verifier: Verifier,
        clock: Clock,
    ) -> None:
        self._client = client
        self._url = controller_url.rstrip("/") + "/internal/token-keys"
        self._headers = {"authorization": f"Bearer {credential}"} if credential else {}
        self._verifier = verifier
        self._clock = clock
        self._failing = False
        self._asked_at: float | None = None  # the last on-demand ask (monotonic)
        self._asking: asyncio.Task[bool] | None = None

    async def learn(self, kid: str) -> None:
        """Ask the controller for a key id no key has: now, or once ON_DEMAND_GAP has
        passed since the last such call."""
        if self._verifier.knows(kid):
            return
        if self._asking is None and self._asked_at is not None:
            wait = self._asked_at + self.ON_DEMAND_GAP - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
                if self._verifier.knows(kid):
                    return
        if self._asking is None:
            self._asked_at = self._clock.monotonic()
            self._asking = asyncio.ensure_future(self.fetch(self.ON_DEMAND_DEADLINE))
            self._asking.add_done_callback(self._asked)
        await asyncio.shield(self._asking)

    def _asked(self, task: asyncio.Task[bool]) -> None:
        self._asking = None
        if not task.cancelled() and task.result():
            log.info("learnt the token verify keys on demand (a token named a new key)")

    async def run(self) -> None:
        attempt = 0
        while True:
            if self._verifier.ready and not self._failing:
                await self._clock.sleep(self.REFRESH)
            else:
                await self._clock.sleep(self.RETRY.delay(attempt))
                attempt += 1
            if await self.fetch():
                attempt = 0

    async def fetch(self, deadline: float | None = None) -> bool:
        """Ask once; True if the verifier has the controller's keys now."""
        try:
            async with asyncio.timeout(deadline or self.DEADLINE):
                keys = await self._ask()
            self._verifier.set_keys(keys)
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            if not self._failing:
                log.warning("cannot get the token verify keys from the controller: %s", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("got the token verify keys from the controller")
        self._failing = False
        return True

    async def _ask(self) -> list[str]:
        async with self._client.stream("GET", self._url, headers=self._headers) as resp:
            if resp.status_code != 200:
                raise ValueError(f"the controller answered {resp.status_code}")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > self.MAX_ANSWER:
                    raise ValueError("the answer is over the size limit")
        keys = json.loads(body).get("keys") if body.startswith(b"{") else None
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError("the answer holds no keys")
        return keys
