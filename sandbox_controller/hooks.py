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
claim a pod. The controller may hold several keys (SANDBOX_HOOK_SECRET and the previous
ones, credentials.hook_keys): a pod answering 401 is asked again with the next, and the
key it took is remembered for its later calls. A status hook refusing them all is
"unknown", kept alive, counted and logged: after a rotation gone wrong, a busy
sandbox is never ended as idle for want of a credential. ``env`` and ``files`` travel only in the claim call: never stored, never
logged (this module logs names and outcomes, not bodies).

What a sandbox answers is hostile input (bounded.py): each call has one total deadline
(connect, send, head and answer together), an answer is read no further than
JSON_ANSWER_MAX bytes and parsed only if it nests no deeper than JSON_DEPTH_MAX. A
broken bound is a failed hook (claim, release) or no answer (status), logged once per
pod however often that pod is asked.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import tracing
from .bounded import JSON_ANSWER_MAX, AnswerRefused, read_capped, read_json
from .model import BusyAnswer
from .quoting import ANSWER_READ_MAX, quote
from .sandbox_contract import CLAIM_PATH, RELEASE_PATH, STATUS_PATH, claim_secret
from .sandbox_contract import HOOK_NOT_IMPLEMENTED as NOT_IMPLEMENTED

log = logging.getLogger(__name__)

# Longest busy detail kept and shown (the sandbox's words, in the session's end detail).
DETAIL_MAX = 200
# Pods whose broken bounds were logged (by create id), so each is logged once; the
# oldest are forgotten beyond this many, which bounds the memory it takes.
WARNED_PODS_MAX = 4096
# A refusal's quote stops reading this long before the call's deadline.
_QUOTE_MARGIN = 0.05


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
    """Calls a pod's hooks over HTTP, each bounded by its own total deadline."""

    def __init__(
        self,
        keys: bytes | Sequence[bytes],
        *,
        timeout: float = 2.0,
        release_timeout: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # The current key first (new pods get their secret from it), then previous ones.
        self._keys: tuple[bytes, ...] = (keys,) if isinstance(keys, bytes) else tuple(keys)
        if not self._keys:
            raise ValueError("the hooks need a key")
        # The key (its index) each pod last accepted, when not the current one.
        self._key_of: OrderedDict[str, int] = OrderedDict()
        self.timeout = timeout
        self.release_timeout = release_timeout
        # No connection reuse across pods matters here: each pod is its own host.
        self._client = httpx.AsyncClient(transport=transport, trust_env=False)
        self._warned: OrderedDict[str, None] = OrderedDict()

    @property
    def client(self) -> httpx.AsyncClient:
        """The client the snapshot and restore calls stream through (snapshots/)."""
        return self._client

    def secret(self, create_id: str) -> str:
        """The claim secret this pod is asked with first."""
        return claim_secret(self._keys[self._key_of.get(create_id, 0)], create_id)

    def _secrets(self, create_id: str) -> list[tuple[int, str]]:
        """Each key's claim secret for this pod, the one it last took first."""
        first = self._key_of.get(create_id, 0)
        order = [first, *(i for i in range(len(self._keys)) if i != first)]
        return [(i, claim_secret(self._keys[i], create_id)) for i in order]

    def _took(self, create_id: str, index: int) -> None:
        if index == 0:
            self._key_of.pop(create_id, None)
            return
        self._key_of[create_id] = index
        self._key_of.move_to_end(create_id)
        if len(self._key_of) > WARNED_PODS_MAX:
            self._key_of.popitem(last=False)

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
            "claim", address, CLAIM_PATH, create_id, self.timeout, body, payload.secrets()
        )

    async def status(self, address: str, create_id: str) -> BusyAnswer:
        """Never raises: whatever the sandbox does, an answer or "no answer"; a 401 to
        every key is neither (``refused``: kept alive, see the module's docstring)."""
        try:
            async with asyncio.timeout(self.timeout):
                for index, secret in self._secrets(create_id):
                    async with self._stream(
                        "GET", address, STATUS_PATH, secret, self.timeout
                    ) as response:
                        if response.status_code == 401:
                            continue
                        self._took(create_id, index)
                        if response.status_code in NOT_IMPLEMENTED:
                            return BusyAnswer(False, "no status hook", answered=False)
                        if response.status_code != 200:
                            words = f"HTTP {response.status_code}"
                            return BusyAnswer(False, words, answered=False)
                        data = await read_json(response)
                        break
                else:
                    return self._refused(create_id, address)
        except (AnswerRefused, TimeoutError, httpx.TimeoutException) as exc:
            words = _refusal_words(exc)
            self._warn_once(create_id, address, "status", words, "no answer")
            return BusyAnswer(False, words, answered=False)
        except httpx.HTTPError as exc:
            return BusyAnswer(False, _error_words(exc), answered=False)
        busy = data.get("busy") if isinstance(data, dict) else None
        detail = data.get("detail", "") if isinstance(data, dict) else None
        if not isinstance(busy, bool) or not isinstance(detail, str):
            words = "an answer that is not {busy, detail}"
            self._warn_once(create_id, address, "status", words, "no answer")
            return BusyAnswer(False, words, answered=False)
        return BusyAnswer(busy, detail[:DETAIL_MAX], answered=True)

    async def release(
        self, address: str, create_id: str, session_id: str, reason: str
    ) -> HookResult:
        body = {"session_id": session_id, "reason": reason}
        return await self._call(
            "release", address, RELEASE_PATH, create_id, self.release_timeout, body
        )

    async def close(self) -> None:
        await self._client.aclose()

    def _refused(self, create_id: str, address: str) -> BusyAnswer:
        if self._first_time(create_id):
            log.warning(
                "sandbox at %s refused every claim secret the controller holds (HTTP 401) "
                "on its status hook; its session is kept alive, and this is not logged "
                "again for this pod (was the hook secret rotated without keeping the old "
                "one in SANDBOX_HOOK_SECRET_PREVIOUS?)",
                address,
            )
        return BusyAnswer(True, "claim secret refused (HTTP 401)", answered=False, refused=True)

    def _stream(
        self,
        method: str,
        address: str,
        path: str,
        secret: str,
        timeout: float,
        body: dict[str, Any] | None = None,
    ) -> AbstractAsyncContextManager[httpx.Response]:
        # Raw bytes are read (bounded.read_capped): ask for them unencoded.
        headers = {"authorization": f"Bearer {secret}", "accept-encoding": "identity"}
        tracing.inject(headers)  # W3C traceparent of the span calling, when tracing is on
        url = f"http://{address}{path}"
        return self._client.stream(method, url, json=body, headers=headers, timeout=timeout)

    async def _call(
        self,
        hook: str,
        address: str,
        path: str,
        create_id: str,
        timeout: float,
        body: dict[str, Any],
        secrets: Sequence[str] = (),
    ) -> HookResult:
        """POST to a hook; its status decides, all within one deadline. A 2xx answer is
        read too (within the cap), so an answer that never ends is a failure, not a
        success holding a connection; of a refusal, only the first bytes are read,
        for the quote (quoting.py)."""
        deadline = asyncio.get_running_loop().time() + timeout
        keys = self._secrets(create_id)
        try:
            async with asyncio.timeout_at(deadline):
                for index, secret in keys:
                    async with self._stream(
                        "POST", address, path, secret, timeout, body
                    ) as response:
                        status = response.status_code
                        if status == 401 and index != keys[-1][0]:
                            continue  # made with another key: ask with the next
                        if 200 <= status < 300:
                            self._took(create_id, index)
                            await read_capped(response, JSON_ANSWER_MAX)
                            return HookResult(HookOutcome.ACCEPTED)
                        if status in NOT_IMPLEMENTED:
                            return HookResult(HookOutcome.NOT_IMPLEMENTED)
                        raw = await _first_bytes(response, deadline)
                        break
        except (AnswerRefused, TimeoutError, httpx.TimeoutException) as exc:
            words = _refusal_words(exc)
            self._warn_once(create_id, address, hook, words, "a failure")
            return HookResult(HookOutcome.FAILED, words)
        except httpx.HTTPError as exc:
            return HookResult(HookOutcome.FAILED, _error_words(exc))
        return HookResult(
            HookOutcome.FAILED, f"HTTP {status}", status=status, answer=quote(raw, secrets)
        )

    def _warn_once(
        self, create_id: str, address: str, hook: str, words: str, counted_as: str
    ) -> None:
        """A sandbox broke a bound: said once per pod, however often it is asked."""
        if not self._first_time(create_id):
            return
        log.warning(
            "sandbox at %s broke the bounds of its %s hook (%s); counted as %s, "
            "and not logged again for this pod",
            address,
            hook,
            words,
            counted_as,
        )

    def _first_time(self, create_id: str) -> bool:
        """Whether this pod has not been warned about yet (it has now)."""
        if create_id in self._warned:
            return False
        self._warned[create_id] = None
        if len(self._warned) > WARNED_PODS_MAX:
            self._warned.popitem(last=False)
        return True


async def _first_bytes(response: httpx.Response, deadline: float) -> bytes:
    """Up to ANSWER_READ_MAX bytes of the body as sent (not decompressed), by the
    call's ``deadline`` (a little before, so the call's own timeout never takes what
    came); what came by then, if the sandbox stalls or hangs up."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout_at(deadline - _QUOTE_MARGIN):
            async for chunk in response.aiter_raw():
                chunks.append(chunk[: ANSWER_READ_MAX - size])
                size += len(chunks[-1])
                if size >= ANSWER_READ_MAX:
                    break
    except (TimeoutError, httpx.HTTPError):
        pass
    return b"".join(chunks)


def _error_words(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    return type(exc).__name__


def _refusal_words(exc: Exception) -> str:
    # Our deadline or the client's per-phase one: the same to the caller.
    return str(exc) if isinstance(exc, AnswerRefused) else "timed out"
