"""The egress proxy's world: a fake internet (fakenet.py), an origin server in it, a
stand-in for the controller's two /internal/egress endpoints (seam 2: a real HTTP server
answering per the contract, until the controller's land), and the proxy as a real
process (``python -m proxy.egress``) resolving through the namespace's dnsmasq."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sandbox_controller.egress_ca import ensure_ca

from .fakenet import FakeNet, TestCA, available, make_test_ca

PROXY_TOKEN = "egress-test-proxy-token"
SECRET_VALUE = "real-secret-9f8e7d6c5b4a"
SECRET2_VALUE = "second-secret-1a2b3c4d"
PLACEHOLDER = "sbx-placeholder-0001"
PLACEHOLDER2 = "sbx-placeholder-0002"

NAMES = ["allowed.test", "unlisted.test", "api.secret.test", "api2.secret.test", "other.test"]


@dataclass
class FakeController:
    """Answers /internal/egress/authorize from ``pods`` (user -> (password, answer or
    status)) and keeps what /internal/egress/denials received."""

    pods: dict[str, tuple[str, dict[str, Any] | int]] = field(default_factory=dict)
    denials: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    url: str = ""

    def start(self) -> ThreadingHTTPServer:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if self.headers.get("authorization") != f"Bearer {PROXY_TOKEN}":
                    return self._send(401, {"code": "unauthorized"})
                if self.path == "/internal/egress/denials":
                    fake.denials.extend(body["denials"])
                    return self._send(204, None)
                fake.calls += 1
                password, answer = fake.pods.get(body["user"], ("", 401))
                if body["password"] != password:
                    return self._send(401, {"code": "bad_credential"})
                if isinstance(answer, int):
                    return self._send(answer, {"code": "session_ended"})
                self._send(200, answer)

            def _send(self, status: int, body: Any) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class World:
    net: FakeNet
    ca: TestCA
    deploy_ca: Path
    bundle: Path  # test CA + deployment CA: what a sandbox's SSL_CERT_FILE would hold
    record: Path  # what the origin received, one JSON line per request
    controller: FakeController
    proxy_port: int
    proxy_log: Path
    names: dict[str, str]
    deploy_key: Path
    static: Path  # served as files by the origin (paths other than /)
    proxy_pid: int = 0

    def received(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def curl(
        self,
        url: str,
        *args: str,
        user: str | None = "pod-a",
        password: str = "pw-a",
        port: int | None = None,
    ) -> tuple[int, str, str]:
        """(status the client saw, its body, curl's stderr) for ``url`` through the proxy;
        for an https URL whose CONNECT was refused, the CONNECT's status."""
        cmd = [
            "curl", "-sS", "--max-time", "20", "--proxy", f"http://127.0.0.1:{port or self.proxy_port}",
            "--cacert", str(self.bundle), "-o", "-", "-w", "\n%{http_code} %{http_connect}",
            "--noproxy", "", url, *args,
        ]  # fmt: skip
        if user is not None:
            cmd[1:1] = ["--proxy-user", f"{user}:{password}"]
        out = subprocess.run(cmd, capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
        body, _, codes = out.stdout.rpartition("\n")
        code, connect = (int(c) for c in codes.split())
        return (code or connect), body, out.stderr


def answer(
    mode: str,
    allow: list[str],
    secrets: list[dict[str, Any]] | None = None,
    session: str | None = "sess-a",
) -> dict[str, Any]:
    return {
        "pod": "pod",
        "session_id": session,
        "mode": mode,
        "allow": allow,
        "deny_cidrs": ["203.0.113.250/32"],
        "secrets": secrets or [],
        "ttl": 1.0,
    }


def start_egress_proxy(
    net: FakeNet,
    controller_url: str,
    token: str,
    trust: Path,
    ca: tuple[Path, Path],
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], int]:
    """``python -m proxy.egress`` resolving through the namespace's dnsmasq, trusting
    ``trust`` for upstream certificates (as a system store would), logging to ``log``;
    ``extra_env``: more SANDBOX_* settings."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).parents[2]),
        "SANDBOX_CONTROLLER_URL": controller_url,
        "SANDBOX_PROXY_TOKEN": token,
        "SANDBOX_EGRESS_RESOLVER": net.resolver,
        "SANDBOX_EGRESS_CA_CERT_FILE": str(ca[0]),
        "SANDBOX_EGRESS_CA_KEY_FILE": str(ca[1]),
        "SANDBOX_STATE_DIR": str(log.parent / "state"),
        "SANDBOX_LOG_LEVEL": "debug",
        "SANDBOX_MAX_HEADER_BYTES": "8192",
        "SSL_CERT_FILE": str(trust),
        **(extra_env or {}),
    }
    with open(log, "w") as log_file:
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy.egress", "--port", "0"],
            stdout=subprocess.PIPE, stderr=log_file, text=True, env=env,
        )  # fmt: skip
    assert proxy.stdout is not None
    line = proxy.stdout.readline()
    assert line.startswith("listening "), log.read_text()
    return proxy, int(line.rsplit(":", 1)[1])


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="package")
def world() -> Iterator[World]:
    reason = available()
    if reason:
        pytest.skip(f"fake internet: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="egress-test-"))
    net = FakeNet(tmp)
    controller = FakeController()
    http = controller.start()
    proxy: subprocess.Popen[str] | None = None
    try:
        net.open()
        names = {
            "allowed.test": net.public(1),
            "unlisted.test": net.public(1),
            "api.secret.test": net.public(2),
            "api2.secret.test": net.public(3),
            "other.test": net.public(4),
        }
        ca = make_test_ca(tmp, NAMES, [net.public(i) for i in range(1, 6)])
        records = {n: [a] for n, a in names.items()}
        records |= {
            "loop.test": ["127.0.0.1"],
            "ten.test": ["10.1.2.3"],
            "meta.test": ["169.254.169.254"],
            "rebind.test": [net.public(1), "10.0.0.5"],
            "cidr.test": ["203.0.113.250"],
        }
        net.dns(records)
        record = tmp / "received.jsonl"
        static = tmp / "static"
        static.mkdir()
        net.run(
            sys.executable, str(Path(__file__).with_name("upstream_server.py")),
            "--cert", str(ca.server_cert), "--key", str(ca.server_key), "--record", str(record),
            "--static", str(static), ready=b"ready",
        )  # fmt: skip
        deploy_cert, deploy_key = ensure_ca(tmp / "deploy-ca")
        bundle = tmp / "bundle.pem"
        bundle.write_bytes(ca.cert.read_bytes() + deploy_cert.read_bytes())
        log_path = tmp / "proxy.log"
        proxy, port = start_egress_proxy(
            net, controller.url, PROXY_TOKEN, ca.cert, (deploy_cert, deploy_key), log_path
        )
        built = World(
            net, ca, deploy_cert, bundle, record, controller, port, log_path, names, deploy_key,
            static,
        )  # fmt: skip
        built.proxy_pid = proxy.pid
        add_pods(built)
        yield built
    finally:
        if proxy is not None:
            stop_process(proxy)
        net.close()
        http.shutdown()
        if os.environ.get("EGRESS_KEEP"):
            print(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def add_pods(world: World) -> None:
    """pod-a enforces a list with two secrets; pod-audit audits; pod-ended's session ended."""
    allow = [
        "allowed.test", "loop.test", "ten.test", "meta.test", "rebind.test", "cidr.test",
        "api.secret.test", "api2.secret.test", "other.test", "other.test:8443",
        "allowed.test:9000",
        world.names["other.test"], "10.0.0.1", "[::1]",
    ]  # fmt: skip
    secrets = [
        {
            "name": "GITHUB_TOKEN",
            "placeholder": PLACEHOLDER,
            "value": SECRET_VALUE,
            "hosts": ["api.secret.test"],
            "header": "Authorization",
            "format": "Bearer {value}",
        },
        {
            "name": "NPM_TOKEN",
            "placeholder": PLACEHOLDER2,
            "value": SECRET2_VALUE,
            "hosts": ["api2.secret.test"],
            "header": "X-Api-Key",
            "format": "{value}",
        },
    ]
    world.controller.pods["pod-a"] = ("pw-a", answer("enforce", allow, secrets))
    world.controller.pods["pod-audit"] = ("pw-b", answer("audit", ["allowed.test"]))
    world.controller.pods["pod-ended"] = ("pw-c", 403)
