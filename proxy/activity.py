"""Per-session activity, batched to the controller at most every flush interval.

Only data moving marks activity: request body pieces, response body pieces and
WebSocket data frames. Opening a WebSocket, pings and pongs do not, so a forgotten tab
does not keep a sandbox alive forever (DESIGN section 4, "Activity").
"""

from __future__ import annotations

import logging

import httpx

from sandbox_controller.clock import Clock
from sandbox_controller.model import ACTIVITY_BATCH_MAX

from .metrics import ProxyMetrics

log = logging.getLogger(__name__)


class ActivityReporter:
    def __init__(
        self,
        client: httpx.AsyncClient,
        controller_url: str,
        credential: str | None,
        interval: float,
        clock: Clock,
        metrics: ProxyMetrics,
    ) -> None:
        self._client = client
        self._url = controller_url.rstrip("/") + "/internal/activity"
        # The proxy's own credential (app.controller_credential): it opens /internal/* only.
        self._headers = {"authorization": f"Bearer {credential}"} if credential else {}
        self._interval = interval
        self._clock = clock
        self._metrics = metrics
        self._pending: dict[str, float] = {}

    def mark(self, session_id: str) -> None:
        # A dict store: cheap enough to call for every chunk on the hot path.
        self._pending[session_id] = self._clock.now()

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        # The controller takes at most ACTIVITY_BATCH_MAX sessions a request.
        for start in range(0, len(items), ACTIVITY_BATCH_MAX):
            await self._send(dict(items[start : start + ACTIVITY_BATCH_MAX]))

    async def _send(self, batch: dict[str, float]) -> None:
        try:
            resp = await self._client.post(
                self._url, json={"activity": batch}, headers=self._headers
            )
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            self._metrics.activity_flush("error")
            log.warning("activity flush of %d sessions failed: %s", len(batch), exc)
            # Keep it for the next round; newer marks made meanwhile win.
            for session_id, seen in batch.items():
                if self._pending.get(session_id, 0.0) < seen:
                    self._pending[session_id] = seen
            return
        self._metrics.activity_flush("ok")
