"""The egress proxy decides per pod and per destination (issue 19, "Allowed and denied"):
curl through the proxy into the fake internet, the proxy resolving through dnsmasq."""

from __future__ import annotations

import base64
import socket
import time
from pathlib import Path

import pytest

from .conftest import World


def test_a_listed_name_is_reached_over_https_and_plain_http(world: World) -> None:
    code, body, err = world.curl("https://allowed.test/x")
    assert code == 200, err
    assert world.names["allowed.test"] in body
    code, body, err = world.curl("http://allowed.test/plain?q=1")
    assert code == 200, err
    last = world.received()[-1]
    assert last["path"] == "/plain?q=1"
    # The proxy's credential never travels on.
    assert not any(k.lower().startswith("proxy-") for k, _ in last["headers"])


def test_an_unlisted_name_is_refused_and_the_denial_reported(world: World) -> None:
    code, _, _ = world.curl("https://unlisted.test/")
    assert code == 403
    code, body, _ = world.curl("http://unlisted.test/")
    assert code == 403 and '"not_allowed"' in body
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(d["host"] == "unlisted.test" for d in world.controller.denials):
            break
        time.sleep(0.05)
    denial = next(d for d in world.controller.denials if d["host"] == "unlisted.test")
    assert denial["session_id"] == "sess-a" and denial["reason"] == "not_allowed"


@pytest.mark.parametrize("name", ["loop.test", "ten.test", "meta.test", "cidr.test"])
def test_a_listed_name_resolving_to_a_denied_address_is_refused(world: World, name: str) -> None:
    code, body, _ = world.curl(f"http://{name}/")
    assert code == 403
    assert '"private_address"' in body or '"denied_cidr"' in body
    assert world.curl(f"https://{name}/")[0] == 403


def test_a_rebinding_name_is_dialled_only_at_its_checked_public_address(world: World) -> None:
    # rebind.test answers a public and a private address at once: only the checked,
    # public one is ever dialled (the private one never sees a connection).
    for _ in range(3):
        code, body, err = world.curl("https://rebind.test/", "-k")
        assert code == 200, err
        assert world.names["allowed.test"] in body


def test_ip_literals_are_checked_like_names(world: World) -> None:
    listed = world.names["other.test"]
    code, _body, err = world.curl(f"https://{listed}/")
    assert code == 200, err
    assert world.curl(f"http://{world.names['allowed.test']}/")[0] == 403  # not listed
    for literal in ("10.0.0.1", "[::1]", "127.0.0.1", "169.254.169.254"):
        assert world.curl(f"http://{literal}/")[0] == 403, literal


def test_a_port_the_list_does_not_name_is_refused(world: World) -> None:
    assert world.curl("https://allowed.test:8443/")[0] == 403
    code, body, _ = world.curl("http://allowed.test:22/")
    assert code == 403 and '"port_not_allowed"' in body
    code, _, err = world.curl("https://other.test:8443/")
    assert code == 200, err


def test_credentials_missing_wrong_or_of_an_ended_session(world: World) -> None:
    code, body, _ = world.curl("http://allowed.test/", "-i", user=None)
    assert code == 407
    assert 'Proxy-Authenticate: Basic realm="agent-sandbox egress"' in body
    assert world.curl("http://allowed.test/", password="wrong")[0] == 407
    assert world.curl("https://allowed.test/", user="pod-ended", password="pw-c")[0] == 403
    assert world.curl("http://allowed.test/", user="pod-ended", password="pw-c")[0] == 403


def test_audit_allows_public_and_still_refuses_private(world: World) -> None:
    code, _, err = world.curl("https://unlisted.test/", user="pod-audit", password="pw-b")
    assert code == 200, err
    assert world.curl("http://ten.test/", user="pod-audit", password="pw-b")[0] == 403
    log = world.proxy_log.read_text()
    assert "host=unlisted.test port=443 kind=tunnel decision=audit_denied reason=not_allowed" in log


def _raw(world: World, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", world.proxy_port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_malformed_and_oversized_heads_are_refused_with_a_code(world: World) -> None:
    assert _raw(world, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw(world, b"GET http://a.test/ HTTP/1.1\r\nBad Header: x\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    big = b"GET http://allowed.test/ HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    answer_ = _raw(world, big)
    assert answer_.startswith(b"HTTP/1.1 431 "), answer_[:100]
    assert b"Traceback" not in answer_
    assert b"Traceback" not in world.proxy_log.read_bytes()


def test_healthz_and_metrics_on_the_proxy_port(world: World) -> None:
    assert _raw(world, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200 "
    )
    metrics = _raw(world, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").decode()
    assert 'sandbox_egress_connections_total{decision="allowed"}' in metrics
    assert 'sandbox_egress_bytes_total{direction="up"}' in metrics


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_tunnel_to_a_fast_source_and_a_reader_that_stops_holds_little(world: World) -> None:
    """Backpressure: the origin pours as fast as it can; while the sandbox reads nothing
    the proxy holds about a buffer's worth, not the flood; then everything still arrives."""
    with socket.create_connection(("127.0.0.1", world.proxy_port), timeout=20) as sock:
        auth = base64.b64encode(b"pod-a:pw-a").decode()
        sock.sendall(
            f"CONNECT allowed.test:9000 HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ")
        before = _rss_kib(world.proxy_pid)
        got = 0
        while got < 1 << 20:  # the flow has started
            got += len(sock.recv(1 << 16))
        time.sleep(1.0)  # the reader stalls; the origin does not
        stalled = _rss_kib(world.proxy_pid)
        while got < 64 << 20:
            data = sock.recv(1 << 20)
            assert data
            got += len(data)
    print(f"proxy RSS {before} KiB at CONNECT, {stalled} KiB with the reader stalled")
    assert stalled - before < 8 * 1024
