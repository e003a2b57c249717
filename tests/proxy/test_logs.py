"""Logs: no token in any line of either server, and one structured access log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from sandbox_controller.serving import RedactSecrets, redact

from ..e2e.test_dev_crash import Dev
from .conftest import token_for


def test_redact_hides_every_carrier_and_bare_tokens() -> None:
    token = token_for("sess-a")
    lines = [
        f'"WebSocket /s/sess-a/ws?token={token}" [accepted]',
        f"GET /s/sess-a/?a=1&token={token}&b=2",
        f"cookie: app=1; sandbox_token={token}; x=y",
        f"Authorization: Bearer {token}",
        f"failed to verify {token}",
    ]
    for line in lines:
        cleaned = redact(line)
        assert token not in cleaned and token.split(".")[2] not in cleaned, cleaned
        assert "[redacted]" in cleaned
    assert redact("GET /s/sess-a/?a=1&b=2") == "GET /s/sess-a/?a=1&b=2"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", (token,), None)
    assert RedactSecrets().filter(record) and record.getMessage() == "token=[redacted]"


async def test_no_log_line_of_either_server_holds_a_token(tmp_path: Path) -> None:
    dev = Dev(tmp_path)
    dev.env.update(
        SANDBOX_PREWARM_POOL_SIZE="1", SANDBOX_LOG_LEVEL="info", SANDBOX_LOG_FORMAT="json"
    )
    try:
        await dev.start()
        created = await dev.client.post("/sessions", json={"user_id": "u", "thread_id": "t"})
        assert created.status_code == 201, created.text
        session = created.json()
        url, token = session["connect"]["url"], session["connect"]["token"]
        base = f"http://127.0.0.1:{dev.proxy_port}"
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for headers, params in [
                ({"authorization": f"Bearer {token}"}, {}),
                ({"x-sandbox-token": token}, {}),
                ({}, {"token": token}),  # 303, then the cookie
            ]:
                resp = await client.get(
                    url + "healthz", headers=headers, params=params, follow_redirects=True
                )
                assert resp.status_code == 200
            resp = await client.post(url + "echo", content=b"x", headers={"origin": base})
            assert resp.status_code == 200  # by the cookie the redirect set
            resp = await client.get(url + "healthz", params={"token": "forged.1.sig"})
            assert resp.status_code == 401
        ws_url = "ws" + url.removeprefix("http") + f"ws?token={token}"
        async with connect(ws_url, proxy=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        await dev.client.delete(f"/sessions/{session['id']}")
    finally:
        await dev.client.aclose()
        if dev.proc is not None:
            dev.proc.terminate()
            dev.proc.wait(30)
        dev.log.close()

    text = (tmp_path / "dev.log").read_text()
    signature = token.split(".")[2]
    assert signature not in text and "forged.1.sig" not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "proxy.access"]
    # One line per answer, with what an operator needs and nothing secret.
    assert {e["status"] for e in access} >= {200, 303, 401, 101}
    for entry in access:
        assert entry["session_id"] == session["id"]
        assert isinstance(entry["bytes"], int) and entry["duration_ms"] >= 0
    assert any("WebSocket" in e["message"] for e in entries), "uvicorn's line is kept, redacted"
