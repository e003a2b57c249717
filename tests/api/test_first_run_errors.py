"""What a first POST /sessions gets wrong, answered in words that say what to send."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import ControllerFactory


@pytest.fixture
async def ctl(start_controller: ControllerFactory) -> Any:
    return await start_controller(prewarm_pool_size=0)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({}, "this request has none"),
        (
            {"content-type": "application/x-www-form-urlencoded"},
            "application/x-www-form-urlencoded",
        ),
        ({"content-type": "text/plain"}, "text/plain"),
    ],
    ids=["no content-type", "curl -d's form type", "text/plain"],
)
async def test_a_body_not_sent_as_json_is_told_what_to_send(
    ctl: Any, headers: dict[str, str], says: str
) -> None:
    response = await ctl.client.post(
        "/sessions", content=b'{"user_id": "u", "thread_id": "t"}', headers=headers
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert "content-type: application/json" in error["message"], error
    assert says in error["message"], error
    assert await ctl.controller.store.list_sessions("u") == []


async def test_malformed_json_names_the_character_where_it_broke(ctl: Any) -> None:
    response = await ctl.client.post(
        "/sessions",
        content=b'{"user_id": "u" "thread_id": "t"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == "the body is not valid JSON at character 16: Expecting ',' delimiter"
