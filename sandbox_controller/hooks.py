"""The sandbox contract's optional hooks, as the controller calls them.

A sandbox may serve three endpoints on its pod port (README, "Bring your own sandbox
image"), each behind ``Authorization: Bearer <the pod's claim secret>``:

- ``POST /_sandbox/claim``: the session the pod now serves (id, user, thread, metadata,
  env, files), before the controller answers ``ready``;
- ``GET /_sandbox/status``: ``{"busy": bool, "detail": str}``, asked before an idle
  session is reclaimed or ended;
- ``POST /_sandbox/release``: the pod is about to be deleted, with a short deadline.

A sandbox that implements none of them answers 404 (or 405/501) and works as before.
The secret is derived per pod from the controller's key and the pod's create id
(sandbox_contract.py ``claim_secret``), so no other pod, and nobody without the key, can
claim a pod. ``env`` and ``files`` travel only in the claim call: never stored, never
logged (this module logs names and outcomes, not bodies).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .model import BusyAnswer
from .quoting import ANSWER_READ_MAX, quote
from .sandbox_contract import CLAIM_PATH, RELEASE_PATH, STATUS_PATH, claim_secret
from .sandbox_contract import HOOK_NOT_IMPLEMENTED as NOT_IMPLEMENTED

log = logging.getLogger(__name__)

# Longest busy detail kept and shown (the sandbox's words, in the session's end detail).
DETAIL_MAX = 200


@dataclass(frozen=True)
class ClaimFile:
    path: str
    content: str


@dataclass(frozen=True)
class ClaimPayload:
    """What a claim delivers. ``env`` and ``files`` are secrets: held in memory only
    until the claim call, and left out of repr so no log line can show them."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    files: Sequence[ClaimFile] = field(default_factory=tuple, repr=False)

    def body(self, session_id: str, user_id: str, thread_id: str) -> dict[str, Any]:
        return {
            "session_id": session_id,
            "user_id": user_id,
            "thread_id": thread_id,
            "metadata": dict(self.metadata),
            "env": dict(self.env),
            "files": [{"path": f.path, "content": f.content} for f in self.files],
        }

    def secrets(self) -> list[str]:
        """What a sandbox's answer must not carry back into a log or the database."""
        return [*self.env.values(), *(f.content for f in self.files)]


class HookOutcome(enum.StrEnum):
    ACCEPTED = "accepted"  # 2xx
    NOT_IMPLEMENTED = "not_implemented"  # 404/405/501: the sandbox has no such hook
    FAILED = "failed"  # anything else: an error status, a timeout, a refused connection


@dataclass(frozen=True)
class HookResult:
    outcome: HookOutcome
    detail: str = ""  # why it failed, for the log and the session's record
    # A failure's HTTP status (None: no answer), and the start of what the sandbox
    # said, printable and with the call's secrets blanked (quoting.py).
    status: int | None = None
    answer: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is not HookOutcome.FAILED


class SandboxHooks:
    """Calls a pod's hooks over HTTP, each bounded by its own deadline."""

    def __init__(
        self,
        key: bytes,
        *,
        timeout: float = 2.0,
        release_timeout: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._key = key
        self.timeout = timeout
        self.release_timeout = release_timeout
        # No connection reuse across pods matters here: each pod is its own host.
        self._client = httpx.AsyncClient(transport=transport, trust_env=False)

    def secret(self, create_id: str) -> str:
        return claim_secret(self._key, create_id)

    async def claim(
        self,
        address: str,
        create_id: str,
        session: tuple[str, str, str],
        payload: ClaimPayload,
    ) -> HookResult:
        """Deliver the session to the pod at ``address`` ("host:port")."""
        session_id, user_id, thread_id = session
        body = payload.body(session_id, user_id, thread_id)
        return await self._call(
            "POST", address, CLAIM_PATH, create_id, self.timeout, body, payload.secrets()
        )

    async def status(self, address: str, create_id: str) -> BusyAnswer:
        try:
            response = await self._client.get(
                f"http://{address}{STATUS_PATH}",
                headers=self._auth(create_id),
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            return BusyAnswer(False, _error_words(exc), answered=False)
        if response.status_code in NOT_IMPLEMENTED:
            return BusyAnswer(False, "no status hook", answered=False)
        if response.status_code != 200:
            return BusyAnswer(False, f"HTTP {response.status_code}", answered=False)
        try:
            data = response.json()
            busy = data["busy"]
            detail = data.get("detail", "")
        except (ValueError, KeyError, TypeError, AttributeError):
            return BusyAnswer(False, "an answer that is not {busy, detail}", answered=False)
        if not isinstance(busy, bool) or not isinstance(detail, str):
            return BusyAnswer(False, "an answer that is not {busy, detail}", answered=False)
        return BusyAnswer(busy, detail[:DETAIL_MAX], answered=True)

    async def release(
        self, address: str, create_id: str, session_id: str, reason: str
    ) -> HookResult:
        body = {"session_id": session_id, "reason": reason}
        return await self._call(
            "POST", address, RELEASE_PATH, create_id, self.release_timeout, body
        )

    async def close(self) -> None:
        await self._client.aclose()

    def _auth(self, create_id: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.secret(create_id)}"}

    async def _call(
        self,
        method: str,
        address: str,
        path: str,
        create_id: str,
        timeout: float,
        body: dict[str, Any],
        secrets: Sequence[str] = (),
    ) -> HookResult:
        request = self._client.build_request(
            method,
            f"http://{address}{path}",
            json=body,
            headers=self._auth(create_id),
            timeout=timeout,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            return HookResult(HookOutcome.FAILED, _error_words(exc))
        try:
            status = response.status_code
            if 200 <= status < 300:
                return HookResult(HookOutcome.ACCEPTED)
            if status in NOT_IMPLEMENTED:
                return HookResult(HookOutcome.NOT_IMPLEMENTED)
            raw = await _first_bytes(response, timeout)
            return HookResult(
                HookOutcome.FAILED, f"HTTP {status}", status=status, answer=quote(raw, secrets)
            )
        finally:
            await response.aclose()


async def _first_bytes(response: httpx.Response, timeout: float) -> bytes:
    """Up to ANSWER_READ_MAX bytes of the body as sent (not decompressed), within
    ``timeout``; what came by then, if the sandbox stalls or hangs up."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in response.aiter_raw():
                chunks.append(chunk[: ANSWER_READ_MAX - size])
                size += len(chunks[-1])
                if size >= ANSWER_READ_MAX:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass
    return b"".join(chunks)


def _error_words(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    return type(exc).__name__
