"""Characters a database cannot store (NUL, other controls, lone surrogates) in a path,
a query or a body are 404 or 422 with an error code, never a 500, on PostgreSQL and
SQLite alike (issue 10, item 6)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_controller.api.badbytes import unstorable

from ..conftest import ControllerFactory

PATHS: list[tuple[str, str]] = [
    ("GET", "/sessions/%00"),
    ("GET", "/sessions/abc%00def"),
    ("GET", "/sessions/%1b%5b2J"),
    ("DELETE", "/sessions/%00"),
    ("POST", "/sessions/%00/touch"),
    ("GET", "/internal/routes/%00"),
    ("GET", "/sessions/%C2%85"),  # NEL, a C1 control
]
QUERIES = ["user_id=%00", "user_id=u%00", "user_id=%7F", "user_id=a+%0A+b", "user_id=%C2%9B"]
# Raw JSON, so that escapes reach the server as written (a lone surrogate cannot be
# encoded to UTF-8 by a client, but "\ud800" is valid JSON text).
BODIES = [
    '{"user_id": "\\u0000", "thread_id": "t"}',
    '{"user_id": "u", "thread_id": "t\\u0000"}',
    '{"user_id": "\\ud800", "thread_id": "t"}',
    '{"user_id": "u", "thread_id": "\\udfff\\ud800"}',
    '{"user_id": "u\\u007f", "thread_id": "t"}',
]


@pytest.fixture
async def ctl(start_controller: ControllerFactory, database_url: str) -> Any:
    return await start_controller(database_url=database_url, prewarm_pool_size=0)


def assert_refused(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


@pytest.mark.parametrize(("method", "path"), PATHS)
async def test_a_control_character_in_the_path_is_404(ctl: Any, method: str, path: str) -> None:
    assert_refused(await ctl.client.request(method, path), 404, "not_found")


@pytest.mark.parametrize("query", QUERIES)
async def test_a_control_character_in_the_query_is_422(ctl: Any, query: str) -> None:
    assert_refused(await ctl.client.get(f"/sessions?{query}"), 422, "invalid_request")


@pytest.mark.parametrize("body", BODIES)
async def test_unstorable_ids_in_a_body_are_422_and_nothing_is_stored(ctl: Any, body: str) -> None:
    response = await ctl.client.post(
        "/sessions", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert_refused(response, 422, "invalid_request")
    assert (await ctl.pool())["pods"] == {"pending": 0, "idle": 0, "assigned": 0, "terminating": 0}


async def test_unicode_that_can_be_stored_still_works(ctl: Any) -> None:
    """The filter refuses controls only: accented and non-Latin ids reach the API."""
    response = await ctl.client.get("/sessions/s%C3%A9ance-%E4%BC%9A")
    assert_refused(response, 404, "session_not_found")
    listed = await ctl.client.get("/sessions?user_id=J%C3%BCrgen+%E4%BC%9A")
    assert listed.status_code == 200
    assert listed.json() == {"sessions": [], "next_cursor": None}
    created = await ctl.client.post(
        "/sessions", json={"user_id": "Jürgen 会", "thread_id": "t", "wait_seconds": 0}
    )
    assert created.status_code == 201, created.text
    listed = await ctl.client.get("/sessions", params={"user_id": "Jürgen 会"})
    assert [s["thread_id"] for s in listed.json()["sessions"]] == ["t"]


def test_unstorable() -> None:
    assert unstorable("\x00") and unstorable("a\x1fb") and unstorable("\x7f")
    assert unstorable("\x85") and unstorable("\ud800")
    assert not unstorable("") and not unstorable("Jürgen 会 🚀 \u200b")
