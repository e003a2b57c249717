"""The egress proxy's calls to the controller (EGRESS.md seam 2): it holds no key.

``authorize`` asks who a Proxy-Authorization belongs to and what that pod may reach; the
answer is cached for its ``ttl`` under (user, sha256(password)), so a PATCH to a session's
list takes effect within a second and a busy pod costs one call a second. Denials are
batched to ``/internal/egress/denials`` like the editor proxy's activity.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from sandbox_controller.clock import Clock
from sandbox_controller.egress_policy import (
    HostPattern,
    IPNetwork,
    Mode,
    PatternError,
    parse_cidrs,
    parse_pattern,
)

log = logging.getLogger(__name__)

DENIAL_BATCH_MAX = 500  # a burst of denials is sent in pieces the controller accepts
DENIALS_PENDING_MAX = 10_000  # a controller that is down never makes us hold more


@dataclass(frozen=True, slots=True)
class Secret:
    name: str
    placeholder: str
    value: str
    hosts: tuple[HostPattern, ...]
    header: str  # lower case
    format: str

    def header_value(self) -> str:
        # replace, not str.format: a format with other braces must not raise or leak.
        return self.format.replace("{value}", self.value)

    def header_with_placeholder(self) -> str:
        return self.format.replace("{value}", self.placeholder)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one pod may reach, as the controller answered."""

    pod: str
    session_id: str | None
    mode: Mode
    allow: tuple[HostPattern, ...]
    deny_cidrs: tuple[IPNetwork, ...]
    secrets: tuple[Secret, ...]


class Refused(Exception):
    """The controller refused the credential: 407 (``unauthenticated``) or 403
    (``session_ended``) to the sandbox."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ControllerUnavailable(Exception):
    pass


def _patterns(texts: Any) -> tuple[HostPattern, ...]:
    """Patterns from the controller's answer; one that cannot be read is left out
    (allowing less, never more)."""
    out = []
    for text in texts or ():
        try:
            out.append(parse_pattern(str(text)))
        except PatternError:
            log.warning("egress: the controller sent an unreadable pattern; ignored")
    return tuple(out)


def _networks(texts: Any) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for text in texts or ():
        try:
            out.extend(parse_cidrs([str(text)]))
        except PatternError:
            log.warning("egress: the controller sent an unreadable deny CIDR; ignored")
    return tuple(out)


def grant_of(body: dict[str, Any]) -> Grant:
    mode = body.get("mode")
    secrets = tuple(
        Secret(
            name=str(s["name"]),
            placeholder=str(s["placeholder"]),
            value=str(s["value"]),
            hosts=_patterns(s.get("hosts")),
            header=str(s.get("header") or "Authorization").lower(),
            format=str(s.get("format") or "{value}"),
        )
        for s in body.get("secrets") or ()
        if s.get("placeholder") and s.get("value")
    )
    return Grant(
        pod=str(body.get("pod", "")),
        session_id=body.get("session_id"),
        # An answer we cannot read enforces: allowing less, never more.
        mode=mode if mode in ("off", "audit", "enforce") else "enforce",
        allow=_patterns(body.get("allow")),
        deny_cidrs=_networks(body.get("deny_cidrs")),
        secrets=secrets,
    )


class ControllerClient:
    def __init__(
        self, base_url: str, credential: str | None, clock: Clock, timeout: float = 5.0
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {credential}"} if credential else {},
            timeout=timeout,
        )
        self._clock = clock
        # key -> (expires at, Grant or Refused)
        self._cache: dict[tuple[str, bytes], tuple[float, Grant | Refused]] = {}
        self._inflight: dict[tuple[str, bytes], asyncio.Future[Grant | Refused]] = {}
        self._denials: list[dict[str, Any]] = []

    async def authorize(self, user: str, password: str) -> Grant:
        key = (user, hashlib.sha256(password.encode()).digest())
        now = self._clock.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            # One call per key at a time: a pod opening 50 connections asks once.
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                try:
                    answer = await self._ask(user, password, key)
                    pending.set_result(answer)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: waiters may be none
                    raise
                finally:
                    del self._inflight[key]
            else:
                answer = await asyncio.shield(pending)
        if isinstance(answer, Refused):
            raise answer
        return answer

    async def _ask(self, user: str, password: str, key: tuple[str, bytes]) -> Grant | Refused:
        try:
            resp = await self._client.post(
                "/internal/egress/authorize", json={"user": user, "password": password}
            )
        except httpx.HTTPError as exc:
            raise ControllerUnavailable(str(exc)) from exc
        ttl = 1.0
        answer: Grant | Refused
        if resp.status_code == 200:
            body = resp.json()
            ttl = max(0.0, min(float(body.get("ttl", 1.0)), 60.0))
            answer = grant_of(body)
        elif resp.status_code == 401:
            answer = Refused(407, "unauthenticated")
        elif resp.status_code == 403:
            answer = Refused(403, "session_ended")
        else:
            raise ControllerUnavailable(f"authorize answered {resp.status_code}")
        self._cache[key] = (self._clock.monotonic() + ttl, answer)
        if len(self._cache) > 10_000:
            self._evict()
        return answer

    def _evict(self) -> None:
        now = self._clock.monotonic()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]

    def denied(self, session_id: str, host: str, port: int, reason: str) -> None:
        if len(self._denials) < DENIALS_PENDING_MAX:
            self._denials.append(
                {
                    "session_id": session_id,
                    "at": self._clock.now(),
                    "host": host,
                    "port": port,
                    "reason": reason,
                }
            )

    async def run_denials(self, interval: float) -> None:
        while True:
            await self._clock.sleep(interval)
            await self.flush_denials()

    async def flush_denials(self) -> None:
        while self._denials:
            batch = self._denials[:DENIAL_BATCH_MAX]
            try:
                resp = await self._client.post("/internal/egress/denials", json={"denials": batch})
                if 400 <= resp.status_code < 500:  # never accepted: retrying cannot help
                    log.warning("egress denials refused: %s", resp.status_code)
                else:
                    resp.raise_for_status()
            except httpx.HTTPError as exc:
                log.warning("egress denial flush of %d failed: %s", len(batch), exc)
                return  # kept for the next round
            del self._denials[: len(batch)]

    async def aclose(self) -> None:
        await self._client.aclose()
