"""The controller's side of the sandbox hooks, against real sandboxes: devsandbox (all
hooks), a server with none (404 everywhere), one that accepts and never answers, and
the hostile sandbox (tests/security/hostile_sandbox.py) in each of its ways."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from sandbox_controller.bounded import AnswerRefused, loads_json, too_deep
from sandbox_controller.hooks import (
    BusyAnswer,
    ClaimFile,
    ClaimPayload,
    HookOutcome,
    HookResult,
    SandboxHooks,
)
from sandbox_controller.sandbox_contract import hook_key

from .security import hostile_sandbox as hostile
from .test_devsandbox import start_devsandbox

T = TypeVar("T")

CREATE_ID = "c0ffee"
KEY = hook_key(b"token-secret-of-this-deployment")
SESSION = ("sess-1", "ada", "thread-9")
PAYLOAD = ClaimPayload(
    metadata={"workspace": "ws-3"},
    env={"OPENAI_API_KEY": "sk-very-secret-value"},
    files=(ClaimFile("notes/readme.txt", "hello\n"),),
)


@pytest.fixture
async def hooks() -> AsyncIterator[SandboxHooks]:
    hooks = SandboxHooks(KEY, timeout=0.5, release_timeout=0.5)
    yield hooks
    await hooks.close()


@pytest.fixture
async def devsandbox(tmp_path: Path, hooks: SandboxHooks) -> AsyncIterator[str]:
    proc, address = await start_devsandbox(tmp_path / "work", hooks.secret(CREATE_ID))
    try:
        yield address
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def tcp_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()


async def answers_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A sandbox image that implements none of the hooks."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A hung sandbox: accepts, reads, says nothing."""
    with contextlib.suppress(ConnectionError):
        await reader.read(-1)


async def test_a_claim_reaches_the_sandbox_with_everything_it_carries(
    hooks: SandboxHooks, devsandbox: str
) -> None:
    result = await hooks.claim(devsandbox, CREATE_ID, SESSION, PAYLOAD)
    assert result.outcome is HookOutcome.ACCEPTED
    async with httpx.AsyncClient() as client:
        seen = await client.get(
            f"http://{devsandbox}/_sandbox/claim",
            headers={"authorization": f"Bearer {hooks.secret(CREATE_ID)}"},
        )
    body = seen.json()
    assert body["session_id"] == "sess-1" and body["user_id"] == "ada"
    assert body["metadata"] == {"workspace": "ws-3"}
    assert body["env"] == {"OPENAI_API_KEY": "sk-very-secret-value"}


async def test_a_pod_made_for_another_create_refuses_the_claim(
    hooks: SandboxHooks, devsandbox: str
) -> None:
    # Its secret was derived from another create id: the sandbox answers 401.
    result = await hooks.claim(devsandbox, "another-create", SESSION, PAYLOAD)
    assert result.outcome is HookOutcome.FAILED and result.detail == "HTTP 401"
    # ... and the right one may still claim it.
    assert (await hooks.claim(devsandbox, CREATE_ID, SESSION, PAYLOAD)).ok


async def test_status_reports_busy_with_its_detail(hooks: SandboxHooks, devsandbox: str) -> None:
    assert await hooks.status(devsandbox, CREATE_ID) == BusyAnswer(False, "", answered=True)
    async with httpx.AsyncClient() as client:
        switched = await client.post(
            f"http://{devsandbox}/_sandbox/busy", json={"busy": True, "detail": "running tests"}
        )
        assert switched.status_code < 300
    answer = await hooks.status(devsandbox, CREATE_ID)
    assert answer == BusyAnswer(True, "running tests", answered=True)
    assert answer.describe() == "busy: running tests"


async def test_release_is_accepted(hooks: SandboxHooks, devsandbox: str) -> None:
    assert (await hooks.claim(devsandbox, CREATE_ID, SESSION, PAYLOAD)).ok
    result = await hooks.release(devsandbox, CREATE_ID, "sess-1", "idle_timeout")
    assert result.outcome is HookOutcome.ACCEPTED


async def test_a_sandbox_without_hooks_works_as_before(hooks: SandboxHooks) -> None:
    async with tcp_server(answers_404) as address:
        claim = await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)
        assert claim.outcome is HookOutcome.NOT_IMPLEMENTED and claim.ok
        status = await hooks.status(address, CREATE_ID)
        assert status == BusyAnswer(False, "no status hook", answered=False)
        release = await hooks.release(address, CREATE_ID, "sess-1", "deleted")
        assert release.ok


async def test_a_hung_sandbox_fails_the_claim_and_counts_as_not_busy(
    hooks: SandboxHooks,
) -> None:
    async with tcp_server(never_answers) as address:
        claim = await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)
        assert claim.outcome is HookOutcome.FAILED and claim.detail == "timed out"
        status = await hooks.status(address, CREATE_ID)
        assert not status.busy and not status.answered
        assert status.describe() == "no answer (timed out)"
        assert not (await hooks.release(address, CREATE_ID, "sess-1", "deleted")).ok


async def test_nothing_listening_is_a_failed_claim(hooks: SandboxHooks) -> None:
    async with tcp_server(never_answers) as address:
        pass  # closed again: the port refuses
    claim = await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)
    assert claim.outcome is HookOutcome.FAILED
    assert claim.detail == "connection refused or unreachable"


def test_the_payloads_secrets_never_show_in_its_repr() -> None:
    text = repr(PAYLOAD)
    assert "sk-very-secret-value" not in text and "hello" not in text
    assert "ws-3" in text  # metadata is not secret


async def test_a_refused_claim_says_what_the_sandbox_answered(
    hooks: SandboxHooks, devsandbox: str
) -> None:
    # "x" and then "x/y": the devsandbox cannot make x a directory and refuses the claim.
    colliding = ClaimPayload(files=(ClaimFile("x", "one"), ClaimFile("x/y", "two")))
    result = await hooks.claim(devsandbox, CREATE_ID, SESSION, colliding)
    assert result.outcome is HookOutcome.FAILED and result.status == 422
    assert result.detail == "HTTP 422"
    assert '"invalid_request"' in result.answer and "files: cannot write" in result.answer


async def test_a_hostile_refusal_is_read_bounded_quoted_short_and_without_secrets(
    hooks: SandboxHooks,
) -> None:
    """A 422 whose body is 1 GiB of echoed secrets (as sent and JSON-escaped) and
    terminal escapes: the call ends within its timeout, having read a few KiB."""
    secret = PAYLOAD.env["OPENAI_API_KEY"]
    multiline = ClaimPayload(env=PAYLOAD.env, files=(ClaimFile("a", "line one\nline two"),))
    sent = 0

    async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 422 Unprocessable\r\ncontent-length: 1073741824\r\n\r\n")
        chunk = b'{"input": "line one\\nline two"} \x1b[2J ' + secret.encode() + b" " * 60_000
        with contextlib.suppress(ConnectionError):
            while sent < 2**30:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

    async with tcp_server(floods) as address:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await hooks.claim(address, CREATE_ID, SESSION, multiline)
        took = loop.time() - started
    assert result.status == 422 and took < 5.0  # bounded by the 0.5 s timeout, generously
    assert sent < 64 * 2**20  # it stopped reading: only socket buffers were filled
    assert secret not in result.answer and "line two" not in result.answer
    assert result.answer.startswith('{"input": "[redacted]"}') and "\x1b" not in result.answer
    assert len(result.answer) <= 200


# Hostile sandboxes (issue 17): a real process answering each hook as badly as it can.
# Every broken bound is a failed hook or "no answer", never an exception.


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def test_a_status_answer_of_a_gigabyte_is_no_answer(hooks: SandboxHooks) -> None:
    for mode, words in (
        ("huge-json", "an answer over the 65536 bytes allowed"),
        ("huge-json-length", f"an answer of {2**30} bytes, over the 65536 allowed"),
    ):
        async with hostile.running("--status", mode) as address:
            answer = await hooks.status(address, CREATE_ID)
        assert answer == BusyAnswer(False, words, answered=False)


@pytest.mark.parametrize(
    ("depth", "words"),
    [
        (100_000, "an answer of 200000 bytes, over the 65536 allowed"),
        (30_000, "a JSON answer nested deeper than 32"),  # within the cap: the depth check
    ],
)
async def test_deeply_nested_brackets_are_no_answer(
    hooks: SandboxHooks, depth: int, words: str
) -> None:
    async with hostile.running("--status", "deep-json", "--depth", str(depth)) as address:
        answer = await hooks.status(address, CREATE_ID)
    assert answer == BusyAnswer(False, words, answered=False)


async def test_a_claim_answer_that_floods_fails_the_claim(hooks: SandboxHooks) -> None:
    async with hostile.running("--claim", "flood") as address:
        result = await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)
    assert result.outcome is HookOutcome.FAILED
    assert result.detail == "an answer over the 65536 bytes allowed"


@pytest.mark.parametrize("mode", ["trickle-head", "trickle-body", "status-line-hold"])
async def test_a_trickling_sandbox_cannot_stretch_the_deadline(
    hooks: SandboxHooks, mode: str
) -> None:
    # A byte every 0.1 s keeps every per-read timeout of the client happy; the call's
    # own deadline (0.5 s, the fixture's) still ends it.
    async with hostile.running("--mode", mode, "--interval", "0.1") as address:
        claim, claim_took = await timed(hooks.claim(address, CREATE_ID, SESSION, PAYLOAD))
        status, status_took = await timed(hooks.status(address, CREATE_ID))
        release, release_took = await timed(hooks.release(address, CREATE_ID, "s", "deleted"))
    assert claim == HookResult(HookOutcome.FAILED, "timed out")
    assert status == BusyAnswer(False, "timed out", answered=False)
    assert release == HookResult(HookOutcome.FAILED, "timed out")
    assert max(claim_took, status_took, release_took) < 0.5 + 1.0


async def test_huge_answer_headers_are_a_failed_hook(hooks: SandboxHooks) -> None:
    async with hostile.running("--mode", "huge-headers") as address:
        claim = await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)
        status = await hooks.status(address, CREATE_ID)
    assert claim.outcome is HookOutcome.FAILED and not status.answered


async def test_a_broken_bound_is_logged_once_per_pod(
    hooks: SandboxHooks, caplog: pytest.LogCaptureFixture
) -> None:
    flags = ("--status", "deep-json", "--depth", "30000", "--claim", "flood")
    async with hostile.running(*flags) as address:
        for _ in range(3):
            assert not (await hooks.status(address, CREATE_ID)).answered
        assert not (await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)).ok
        assert not (await hooks.status(address, "another-pod")).answered
    lines = [r.getMessage() for r in caplog.records if "broke the bounds" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "status hook (a JSON answer nested deeper than 32); counted as no answer" in lines[0]
    assert all("Traceback" not in (r.exc_text or "") for r in caplog.records)


async def test_an_honest_hostile_sandbox_answers(hooks: SandboxHooks) -> None:
    """The same server with every hook honest: the bounds refuse nothing that is fine."""
    async with hostile.running() as address:
        assert (await hooks.claim(address, CREATE_ID, SESSION, PAYLOAD)).outcome is (
            HookOutcome.ACCEPTED
        )
        assert await hooks.status(address, CREATE_ID) == BusyAnswer(
            False, "honest here", answered=True
        )


def test_depth_is_counted_outside_strings_only() -> None:
    assert not too_deep(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\""}', 2)
    assert not too_deep(b'[[1], [2], {"x": 3}]', 2)
    assert too_deep(b'[[1], [2], {"x": [3]}]', 2)
    assert too_deep(b"[[[1]]]", 2)
    assert loads_json(b'{"busy": true}') == {"busy": True}
    with pytest.raises(AnswerRefused):
        loads_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(AnswerRefused):
        loads_json(b"1" * 10_000)  # past int's digit limit: a ValueError inside


ROTATED = hook_key(b"the-hook-secret-after-the-rotation")


async def test_a_pod_made_before_a_hook_rotation_answers_to_the_previous_key(
    hooks: SandboxHooks, devsandbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    # devsandbox got its secret from KEY; the controller now signs new pods with ROTATED.
    rotated = SandboxHooks((ROTATED, KEY), timeout=0.5, release_timeout=0.5)
    try:
        assert rotated.secret(CREATE_ID) != hooks.secret(CREATE_ID)
        assert (await rotated.claim(devsandbox, CREATE_ID, SESSION, PAYLOAD)).ok
        # The key it took is asked first from now on.
        assert rotated.secret(CREATE_ID) == hooks.secret(CREATE_ID)
        await set_busy(devsandbox, True, "rotating")
        answer = await rotated.status(devsandbox, CREATE_ID)
        assert answer == BusyAnswer(True, "rotating", answered=True)
        assert (await rotated.release(devsandbox, CREATE_ID, "sess-1", "deleted")).ok
    finally:
        await rotated.close()
    assert "refused every claim secret" not in caplog.text


async def test_a_status_hook_refusing_every_key_keeps_the_session_and_says_so(
    devsandbox: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A hook secret rotated without keeping the old one: 401 is no "not busy".
    await set_busy(devsandbox, True, "compiling")
    lost = SandboxHooks(ROTATED, timeout=0.5, release_timeout=0.5)
    try:
        for _ in range(2):
            answer = await lost.status(devsandbox, CREATE_ID)
            assert answer.busy and answer.refused and not answer.answered
            assert answer.describe() == "unknown (claim secret refused (HTTP 401))"
        claim = await lost.claim(devsandbox, CREATE_ID, SESSION, PAYLOAD)
        assert claim.outcome is HookOutcome.FAILED and claim.status == 401
    finally:
        await lost.close()
    assert caplog.text.count("refused every claim secret") == 1  # once per pod


async def set_busy(address: str, busy: bool, detail: str) -> None:
    async with httpx.AsyncClient() as sandbox:
        response = await sandbox.post(
            f"http://{address}/_sandbox/busy", json={"busy": busy, "detail": detail}
        )
        response.raise_for_status()
