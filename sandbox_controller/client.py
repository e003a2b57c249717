"""A client for editor backends: the controller's session API, async and sync, on httpx.

    async with AsyncSandboxClient("http://controller:8080", api_token) as client:
        session = await client.open_session("user-1", "thread-9")  # ready, or raises
        show(session.connect.url, session.connect.token)

``open_session`` is safe to retry (a thread has at most one live session), so the client
retries it itself: on 429 and 503 it waits what the server's ``Retry-After`` says (a
floor under the one ``Backoff``) up to ``max_retries`` times, then raises the error for
the code. A session still ``provisioning`` is polled with GET until it is ready or
``ready_within`` has passed. Every refusal raises a ``SandboxAPIError`` subclass named
after its code, carrying ``code``, ``message``, ``status`` and ``retry_after``.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from .aiotime import Backoff
from .client_errors import (
    ERRORS,
    RETRIED,
    CapacityExhaustedError,
    ClaimLimitExceededError,
    EgressNotGrantableError,
    HooksDisabledError,
    InvalidRequestError,
    NotLeaderError,
    NotReadyError,
    OrgRateLimitedError,
    OrgSessionLimitError,
    ResourcesOutOfBoundsError,
    RestoreFailedError,
    SandboxAPIError,
    SessionEndedError,
    SessionNotFoundError,
    SessionNotReadyError,
    SessionSuspendedError,
    StoreUnavailableError,
    SuspensionDisabledError,
    ThreadOwnedByOtherUserError,
    UnauthorizedError,
    UnknownPlanError,
    UnknownTemplateError,
    UserBeingDeletedError,
    UserSessionLimitError,
    error_from,
)
from .client_results import Connect, EndDetail, Opened, Session
from .clock import Clock, SystemClock
from .wire_errors import STATUS, ErrorCode

__all__ = [
    "ERRORS",
    "RETRIED",
    "AsyncSandboxClient",
    "CapacityExhaustedError",
    "ClaimLimitExceededError",
    "Connect",
    "EgressNotGrantableError",
    "EndDetail",
    "HooksDisabledError",
    "InvalidRequestError",
    "NotLeaderError",
    "NotReadyError",
    "Opened",
    "OrgRateLimitedError",
    "OrgSessionLimitError",
    "ResourcesOutOfBoundsError",
    "RestoreFailedError",
    "SandboxAPIError",
    "SandboxClient",
    "Session",
    "SessionEndedError",
    "SessionNotFoundError",
    "SessionNotReadyError",
    "SessionSuspendedError",
    "StoreUnavailableError",
    "SuspensionDisabledError",
    "ThreadOwnedByOtherUserError",
    "UnauthorizedError",
    "UnknownPlanError",
    "UnknownTemplateError",
    "UserBeingDeletedError",
    "UserSessionLimitError",
    "error_from",
]

T = TypeVar("T")


# ------------------------------------------------------------------ the clients


class AsyncSandboxClient:
    def __init__(
        self,
        base_url: str,
        api_token: str | None = None,
        *,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        ready_within: float = 120.0,
        timeout: float = 150.0,
        clock: Clock | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # The HTTP timeout outlasts the longest server-side wait (wait_seconds <= 120).
        headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.max_retries = max_retries
        # A Retry-After longer than this is not waited out: the error is raised at once.
        self.max_retry_wait = max_retry_wait
        self.ready_within = ready_within
        self._clock = clock or SystemClock()
        self._backoff = Backoff(0.2, 2.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise error_from(response)
        return response

    async def open_session(
        self,
        user_id: str,
        thread_id: str,
        *,
        wait_seconds: float = 30.0,
        ready_within: float | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        files: Mapping[str, str] | None = None,
        org_id: str | None = None,
        plan: str | None = None,
        template: str | None = None,
        resources: Mapping[str, str] | None = None,
    ) -> Opened:
        """The thread's session, ready. Retries 429/503 after Retry-After, polls while
        provisioning; raises the error for the code when it gives up.

        ``env`` and ``files`` (path -> text) reach the sandbox through its claim hook
        and are never stored; ``metadata`` is stored and echoed. A thread that already
        has its session gets it back as it is: they are not delivered again."""
        clock = self._clock  # the one clock of every wait: deadlines and sleeps alike
        deadline = clock.monotonic() + (self.ready_within if ready_within is None else ready_within)
        attempt = 0
        while True:
            # The server waits no longer than the caller will.
            left = max(0.0, deadline - clock.monotonic())
            body = {
                "user_id": user_id,
                "thread_id": thread_id,
                "wait_seconds": min(wait_seconds, left),
            }
            if org_id is not None:
                body["org_id"] = org_id
            if plan is not None:
                body["plan"] = plan
            if env:
                body["env"] = dict(env)
            if metadata:
                body["metadata"] = dict(metadata)
            if files:
                body["files"] = [{"path": p, "content": c} for p, c in files.items()]
            if template is not None:
                body["template"] = template
            if resources:
                body["resources"] = dict(resources)
            try:
                response = await self._call("POST", "/sessions", json=body)
                break
            except SandboxAPIError as exc:
                retry_after = exc.retry_after or 0.0
                if (
                    exc.status not in RETRIED
                    or attempt >= self.max_retries
                    or retry_after > self.max_retry_wait
                ):
                    raise
            # Retry-After is a floor under the backoff, honoured up to max_retry_wait.
            await clock.sleep(max(self._backoff.delay(attempt), retry_after))
            attempt += 1
        opened = Opened(Session.from_json(response.json()), response.status_code == 201)
        session = await self._until_ready(opened.session, deadline)
        return Opened(session, opened.created)

    async def _until_ready(self, session: Session, deadline: float) -> Session:
        clock = self._clock
        started = clock.monotonic()
        attempt = 0
        while session.state == "provisioning":
            left = deadline - clock.monotonic()
            if left <= 0:
                raise NotReadyError(session, clock.monotonic() - started)
            await clock.sleep(min(left, self._backoff.delay(attempt)))
            attempt += 1
            session = await self.get(session.id)
        if session.state == "ended":
            why = session.end_reason
            if session.end_detail is not None and session.end_detail.claim_answer:
                why = f"{why}: {session.end_detail.claim_answer}"
            raise SessionEndedError(
                ErrorCode.SESSION_ENDED,
                f"session {session.id} ended while starting ({why})",
                STATUS[ErrorCode.SESSION_ENDED],
            )
        return session

    async def get(self, session_id: str) -> Session:
        response = await self._call("GET", f"/sessions/{session_id}")
        return Session.from_json(response.json())

    async def refresh(self, session_id: str) -> Connect:
        """A fresh connect token (and URL) for a live session."""
        session = await self.get(session_id)
        if session.connect is None:
            raise SessionEndedError(
                ErrorCode.SESSION_ENDED,
                f"session {session_id} has ended ({session.end_reason})",
                STATUS[ErrorCode.SESSION_ENDED],
            )
        return session.connect

    async def list(self, user_id: str) -> builtins.list[Session]:
        response = await self._call("GET", "/sessions", params={"user_id": user_id})
        return [Session.from_json(s) for s in response.json()["sessions"]]

    async def touch(self, session_id: str) -> None:
        """Mark activity: the agent runtime calls this while it works unseen."""
        await self._call("POST", f"/sessions/{session_id}/touch")

    async def delete(self, session_id: str) -> None:
        """End the session (the thread was closed); its pod is deleted."""
        await self._call("DELETE", f"/sessions/{session_id}")


class SandboxClient:
    """The same calls, blocking: each runs the async client on this client's own loop.
    For code without an event loop; inside one, use AsyncSandboxClient."""

    def __init__(self, base_url: str, api_token: str | None = None, **options: Any) -> None:
        self._runner = asyncio.Runner()
        self._async = AsyncSandboxClient(base_url, api_token, **options)

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(call)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._run(self._async.aclose())
        self._runner.close()

    def open_session(
        self,
        user_id: str,
        thread_id: str,
        *,
        wait_seconds: float = 30.0,
        ready_within: float | None = None,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        files: Mapping[str, str] | None = None,
        org_id: str | None = None,
        plan: str | None = None,
        template: str | None = None,
        resources: Mapping[str, str] | None = None,
    ) -> Opened:
        return self._run(
            self._async.open_session(
                user_id,
                thread_id,
                wait_seconds=wait_seconds,
                ready_within=ready_within,
                env=env,
                metadata=metadata,
                files=files,
                org_id=org_id,
                plan=plan,
                template=template,
                resources=resources,
            )
        )

    def get(self, session_id: str) -> Session:
        return self._run(self._async.get(session_id))

    def refresh(self, session_id: str) -> Connect:
        return self._run(self._async.refresh(session_id))

    def list(self, user_id: str) -> builtins.list[Session]:
        return self._run(self._async.list(user_id))

    def touch(self, session_id: str) -> None:
        self._run(self._async.touch(session_id))

    def delete(self, session_id: str) -> None:
        self._run(self._async.delete(session_id))
