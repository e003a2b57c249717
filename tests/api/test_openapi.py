"""The controller's OpenAPI document tells the truth, checked against a real
`sandbox-controller serve` (local backend, SQLite) on free ports:

- schemathesis with all checks: no undocumented status code, no schema-valid request
  refused, no schema-violating request accepted, no server error, 405 with ``Allow``;
- the id rules the schema states are the API's (blank refused, Unicode accepted);
- a client generated from the document (datamodel-code-generator) reads real answers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import sandbox_processes
from ..eventually import eventually
from ..test_client import free_port

TOKEN = "openapi-test-token"
HERE = Path(__file__).parent

pytestmark = pytest.mark.slow


class Served:
    def __init__(self, tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.state_dir = str(tmp / "state")
        env = {
            **os.environ,
            "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/sandbox.db",
            "SANDBOX_STATE_DIR": self.state_dir,
            "SANDBOX_PORT": self.url.rsplit(":", 1)[1],
            "SANDBOX_API_TOKEN": TOKEN,
            "SANDBOX_TOKEN_SECRET": "openapi-test-secret",
            # Room for every session schemathesis opens: a 503 would be a server error.
            "SANDBOX_PREWARM_POOL_SIZE": "1",
            "SANDBOX_MAX_TOTAL_JOBS": "100",
            "SANDBOX_LOG_LEVEL": "warning",
        }
        self.log = open(tmp / "serve.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox_controller.cli", "serve"],
            env=env, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )

    async def ready(self) -> bool:
        assert self.proc.poll() is None, "the controller exited"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(self.url + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        # `serve` leaves its sandboxes running for the next leader to adopt; this test
        # has none, so it stops them (each inherited this server's state dir).
        for pid in sandbox_processes(self.state_dir):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("openapi"))
    try:
        asyncio.run(eventually(server.ready, within=60, what="the controller"))
        yield server
    finally:
        server.stop()


def test_schemathesis_finds_nothing_untrue(served: Served, tmp_path: Path) -> None:
    # Small and seeded: bounded in time (each opened session starts a sandbox process)
    # and the same cases on every run.
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli",
         "--config-file", str(HERE / "schemathesis.toml"),
         "run", f"{served.url}/openapi.json",
         "--header", f"Authorization: Bearer {TOKEN}",
         "--checks", "all", "--max-examples", "10", "--seed", "1",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "60",
         "--generation-database", "none",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its caches go there
    )  # fmt: skip
    # On failure, the findings (long request bodies cut short), not the whole log.
    findings = [line[:300] for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode == 0, "\n".join(findings[-80:])
    assert "No issues found" in result.stdout, "\n".join(findings[-40:])


@pytest.mark.parametrize(
    ("user_id", "status"),
    [("   ", 422), ("\t", 422), ("a\u0085b", 422), ("😀", 201), ("josé", 201), ("  x  ", 201)],
    ids=["spaces", "tab", "c1-control", "emoji", "accent", "padded"],
)
def test_the_id_rule_the_schema_states_is_the_api_s(
    served: Served, user_id: str, status: int
) -> None:
    schema = served.http.get("/openapi.json").json()["components"]["schemas"]["CreateSession"]
    pattern = schema["properties"]["user_id"]["pattern"]
    assert bool(re.search(pattern, user_id)) is (status == 201)

    response = served.http.post(
        "/sessions", json={"user_id": user_id, "thread_id": f"t-{user_id}", "wait_seconds": 0}
    )
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json()["error"]["code"] == "invalid_request"
    else:
        served.http.delete(f"/sessions/{response.json()['id']}")


def test_405_names_every_method_of_the_path(served: Served) -> None:
    refused = served.http.put("/sessions")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, POST"
    assert refused.json()["error"]["code"] == "method_not_allowed"
    assert served.http.patch("/sessions/abc").headers["allow"] == "DELETE, GET"


def test_a_client_generated_from_the_document_reads_real_answers(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(served.http.get("/openapi.json").text)
    generated = tmp_path / "models.py"
    subprocess.run(
        [sys.executable, "-m", "datamodel_code_generator",
         "--input", str(document), "--input-file-type", "openapi",
         "--output", str(generated), "--output-model-type", "pydantic_v2.BaseModel"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    spec = importlib.util.spec_from_file_location("generated_models", generated)
    assert spec is not None and spec.loader is not None
    models: Any = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, models)  # its annotations resolve there
    spec.loader.exec_module(models)

    opened = served.http.post("/sessions", json={"user_id": "gen", "thread_id": "gen-1"})
    session = models.SessionBody.model_validate_json(opened.text)
    assert session.state.value == "ready" and session.connect.url.endswith(f"/{session.id}/")

    listed = models.SessionList.model_validate_json(
        served.http.get("/sessions", params={"user_id": "gen"}).text
    )
    assert [s.id for s in listed.sessions] == [session.id]
    models.PoolBody.model_validate_json(served.http.get("/pool").text)

    served.http.delete(f"/sessions/{session.id}")
    ended = models.SessionBody.model_validate_json(served.http.get(f"/sessions/{session.id}").text)
    assert ended.end_reason.value == "deleted" and ended.connect is None

    missing = models.ErrorBody.model_validate_json(served.http.get("/sessions/nope").text)
    assert missing.error.code == "session_not_found"
    # The generated request model states the same limits the API enforces.
    with pytest.raises(ValueError):
        models.CreateSession(user_id="   ", thread_id="t")
    assert json.loads(models.CreateSession(user_id="u", thread_id="t").model_dump_json())
