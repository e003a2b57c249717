"""Several API tokens at once (SANDBOX_API_TOKENS), over real HTTP: each opens the API
and the console, anything else is refused before a byte of its body is read, and the
caller is known by its token's id (api/auth.py), never by the token."""

from __future__ import annotations

import httpx
from starlette.requests import Request

from sandbox_controller.api.auth import ANONYMOUS, Caller, authenticated_caller, caller_id
from sandbox_controller.credentials import fingerprint, parse_api_tokens
from sandbox_controller.tokens import secret_key_id, token_key_id

from ..conftest import API_TOKEN, ControllerFactory

ROTATED = "the-api-token-after-the-rotation"


async def test_the_old_and_the_new_token_both_open_the_api_and_the_console(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(api_tokens=f"after:{ROTATED}")
    await ctl.wait_idle_pods(1)
    async with httpx.AsyncClient(base_url=ctl.url) as http:
        for token in (API_TOKEN, ROTATED):
            pool = await http.get("/pool", headers={"authorization": f"Bearer {token}"})
            assert pool.status_code == 200, pool.text
            signed = await http.post("/console/login", data={"token": token})
            assert signed.status_code == 303, signed.text
            http.cookies.clear()
        refused = await http.post(
            "/sessions",
            json={"user_id": "ada", "thread_id": "t"},
            headers={"authorization": f"Bearer {ROTATED}x"},
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        opened = await http.post(
            "/sessions",
            json={"user_id": "ada", "thread_id": "t", "wait_seconds": 30},
            headers={"authorization": f"Bearer {ROTATED}"},
        )
        assert opened.status_code == 201, opened.text
    # The session token names the key that signed it.
    assert token_key_id(opened.json()["connect"]["token"]) == secret_key_id(b"test-token-secret")


async def test_the_token_keys_answer_every_verifying_key(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(token_secret_previous="the-token-secret-before-it")
    keys = (await ctl.client.get("/internal/token-keys")).json()["keys"]
    assert len(keys) == 2 and len(set(keys)) == 2


def request_with(authorization: str) -> Request:
    return Request({"type": "http", "headers": [(b"authorization", authorization.encode())]})


def test_the_caller_is_named_by_the_tokens_id_or_its_fingerprint() -> None:
    tokens = parse_api_tokens(f"backend:{ROTATED},{API_TOKEN}")
    assert authenticated_caller(f"Bearer {ROTATED}", tokens) == Caller("backend")
    assert authenticated_caller(f"bearer {API_TOKEN}", tokens) == Caller(fingerprint(API_TOKEN))
    assert authenticated_caller(f"Basic {ROTATED}", tokens) is None
    assert authenticated_caller("Bearer guess", tokens) is None
    request = request_with(f"Bearer {ROTATED}")
    assert caller_id(request) is None  # no route's auth has run
    request.state.caller = Caller("backend")
    assert caller_id(request) == "backend"
    request.state.caller = ANONYMOUS
    assert caller_id(request) == "anonymous"
