"""Logs: no token in any line of either server, and one structured access log."""

from __future__ import annotations

import json
import logging
import random
import string
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from sandbox_controller.serving import _SECRETS, RedactSecrets, redact

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
        assert token not in cleaned and token.split(".")[-1] not in cleaned, cleaned
        assert "[redacted]" in cleaned
    assert redact("GET /s/sess-a/?a=1&b=2") == "GET /s/sess-a/?a=1&b=2"

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", (token,), None)
    assert RedactSecrets().filter(record) and record.getMessage() == "token=[redacted]"


def test_the_quick_clean_check_never_lets_a_secret_through() -> None:
    # redact() skips its full pattern on lines without a hint of a secret; on lines built
    # from secret-like pieces (odd cases and Unicode case folds included) both must agree.
    def full(text: str) -> str:
        return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or "") + "[redacted]", text)

    alphabet = string.ascii_letters + string.digits + "._-=?&; /\"'\u212a\u0130\u017f"
    pieces = ["token=", "TOKEN=", "Bearer ", "bEaReR\t", ".1234567.", "to\u212aen=", "x" * 43]
    rng = random.Random(11)
    for _ in range(5000):
        line = "".join(
            rng.choice(pieces) if rng.random() < 0.1 else rng.choice(alphabet)
            for _ in range(rng.randint(0, 80))
        )
        assert redact(line) == full(line), line


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
    signature = token.split(".")[-1]
    assert signature not in text and "forged.1.sig" not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "proxy.access"]
    # One line per answer, with what an operator needs and nothing secret.
    assert {e["status"] for e in access} >= {200, 303, 401, 101}
    for entry in access:
        assert entry["session_id"] == session["id"]
        assert isinstance(entry["bytes"], int) and entry["duration_ms"] >= 0
    assert any("WebSocket" in e["message"] for e in entries), "uvicorn's line is kept, redacted"
