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
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from .aiotime import Backoff
from .clock import Clock, SystemClock
from .wire_errors import STATUS, ErrorCode

T = TypeVar("T")


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Connect:
    """Where the editor reaches the sandbox, and the token that opens it (until it expires:
    ``refresh`` hands out a fresh one)."""

    url: str
    token: str


@dataclass(frozen=True)
class EndDetail:
    """Why a session ended when it did: its last activity, where that came from, the
    sandbox's answer when it was asked whether it was busy, and why its claim was given
    up (claim_rejected); None where they do not apply."""

    last_active_at: str | None
    activity_source: str | None  # handover | proxy | touch | busy
    busy_answer: str | None
    # claim_rejected: why the claim was given up, quoting the sandbox's answer.
    claim_answer: str | None = None
    # evicted: the platform's words for the eviction.
    eviction: str | None = None


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    thread_id: str
    state: str  # provisioning | ready | ended
    # deleted | idle_timeout | max_lifetime | reclaimed | pod_failed | startup_timeout |
    # claim_rejected | controller_stopped | evicted
    end_reason: str | None
    created_at: str
    last_active_at: str | None
    ended_at: str | None
    pod: str | None
    connect: Connect | None  # None once ended
    reclaimed_session_id: str | None
    detail: str | None  # why a provisioning session is not ready yet
    metadata: Mapping[str, str] = field(default_factory=dict)  # as given at open
    activity_source: str | None = None  # of the last activity: handover|proxy|touch|busy
    activity_detail: str | None = None  # what it said (a busy sandbox's detail)
    end_detail: EndDetail | None = None  # once ended
    org_id: str | None = None  # as given at open
    plan: str | None = None  # the plan it was admitted under (None: the defaults)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Session:
        connect = body.get("connect")
        activity = body.get("last_activity") or {}
        ended = body.get("end_detail")
        return cls(
            id=body["id"],
            user_id=body["user_id"],
            thread_id=body["thread_id"],
            state=body["state"],
            end_reason=body.get("end_reason"),
            created_at=body["created_at"],
            last_active_at=body.get("last_active_at"),
            ended_at=body.get("ended_at"),
            pod=body.get("pod"),
            connect=Connect(connect["url"], connect["token"]) if connect else None,
            reclaimed_session_id=body.get("reclaimed_session_id"),
            detail=body.get("detail"),
            metadata=body.get("metadata") or {},
            activity_source=activity.get("source"),
            activity_detail=activity.get("detail"),
            end_detail=EndDetail(
                ended.get("last_active_at"),
                ended.get("activity_source"),
                ended.get("busy_answer"),
                ended.get("claim_answer"),
                ended.get("eviction"),
            )
            if ended
            else None,
            org_id=body.get("org_id"),
            plan=body.get("plan"),
        )


@dataclass(frozen=True)
class Opened:
    """What ``open_session`` got: the session, and whether it was made now (201) or the
    thread already had it (200)."""

    session: Session
    created: bool


# ------------------------------------------------------------------ errors


class SandboxAPIError(Exception):
    """The controller refused: ``code`` is the error code of its body."""

    code: str = ""  # each subclass names its code; an instance keeps the server's word

    def __init__(
        self, code: str, message: str, status: int, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UnauthorizedError(SandboxAPIError):
    code = ErrorCode.UNAUTHORIZED


class InvalidRequestError(SandboxAPIError):
    code = ErrorCode.INVALID_REQUEST


class ClaimLimitExceededError(SandboxAPIError):
    """``env``, ``metadata`` or ``files`` over a limit (README, claim-time configuration)."""

    code = ErrorCode.CLAIM_LIMIT_EXCEEDED


class HooksDisabledError(SandboxAPIError):
    """``env`` or ``files`` sent to a controller running with SANDBOX_HOOKS=false."""

    code = ErrorCode.HOOKS_DISABLED


class UserSessionLimitError(SandboxAPIError):
    code = ErrorCode.USER_SESSION_LIMIT


class UnknownPlanError(SandboxAPIError):
    code = ErrorCode.UNKNOWN_PLAN


class OrgSessionLimitError(SandboxAPIError):
    code = ErrorCode.ORG_SESSION_LIMIT


class OrgRateLimitedError(SandboxAPIError):
    code = ErrorCode.ORG_RATE_LIMITED


class CapacityExhaustedError(SandboxAPIError):
    code = ErrorCode.CAPACITY_EXHAUSTED


class NotLeaderError(SandboxAPIError):
    code = ErrorCode.NOT_LEADER


class StoreUnavailableError(SandboxAPIError):
    code = ErrorCode.STORE_UNAVAILABLE


class SessionNotFoundError(SandboxAPIError):
    code = ErrorCode.SESSION_NOT_FOUND


class SessionEndedError(SandboxAPIError):
    code = ErrorCode.SESSION_ENDED


class ThreadOwnedByOtherUserError(SandboxAPIError):
    code = ErrorCode.THREAD_OWNED_BY_OTHER_USER


class UnknownTemplateError(SandboxAPIError):
    code = ErrorCode.UNKNOWN_TEMPLATE


class ResourcesOutOfBoundsError(SandboxAPIError):
    code = ErrorCode.RESOURCES_OUT_OF_BOUNDS


class UserBeingDeletedError(SandboxAPIError):
    """The user's data is being deleted (DELETE /users/{id}); no session meanwhile."""

    code = ErrorCode.USER_BEING_DELETED


class RestoreFailedError(SandboxAPIError):
    """A resume's restore failed; the session stays suspended (retried after
    Retry-After, as a 503)."""

    code = ErrorCode.RESTORE_FAILED


class SessionSuspendedError(SandboxAPIError):
    code = ErrorCode.SESSION_SUSPENDED


class SuspensionDisabledError(SandboxAPIError):
    code = ErrorCode.SUSPENSION_DISABLED


class SessionNotReadyError(SandboxAPIError):
    code = ErrorCode.SESSION_NOT_READY


class NotReadyError(SandboxAPIError):
    """Client-side: the session was still provisioning when ``ready_within`` ran out.
    The session is live; open it again (same thread) to keep waiting, or delete it."""

    code = "not_ready"

    def __init__(self, session: Session, waited: float) -> None:
        super().__init__(
            self.code,
            f"session {session.id} not ready after {waited:.1f} s: {session.detail}",
            0,
        )
        self.session = session


ERRORS: dict[str, type[SandboxAPIError]] = {
    cls.code: cls
    for cls in (
        UnauthorizedError,
        InvalidRequestError,
        ClaimLimitExceededError,
        HooksDisabledError,
        UserSessionLimitError,
        UnknownPlanError,
        OrgSessionLimitError,
        OrgRateLimitedError,
        CapacityExhaustedError,
        NotLeaderError,
        StoreUnavailableError,
        SessionNotFoundError,
        SessionEndedError,
        ThreadOwnedByOtherUserError,
        UnknownTemplateError,
        ResourcesOutOfBoundsError,
        UserBeingDeletedError,
        RestoreFailedError,
        SessionSuspendedError,
        SuspensionDisabledError,
        SessionNotReadyError,
    )
}
RETRIED = frozenset({429, 503})


def error_from(response: httpx.Response) -> SandboxAPIError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = ErrorCode.HTTP_ERROR, response.text[:200]
    retry_after: float | None
    try:
        retry_after = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    return ERRORS.get(code, SandboxAPIError)(code, message, response.status_code, retry_after)


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
