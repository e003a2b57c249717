"""The egress proxy's accept path under clients that hold it (front.py): half-sent heads
do not stall the event loop, are closed at the header deadline, and connections over
the cap are answered 503. Behaviour only; the figures are printed."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PROXY_TOKEN, World, start_egress_proxy, stop_process

AUTH = base64.b64encode(b"pod-a:pw-a").decode()
HALF_HEAD = f"CONNECT allowed.test:443 HTTP/1.1\r\nProxy-Authorization: Basic {AUTH}\r\n".encode()
SLOW_CLIENTS = 400


def _answer(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _tunnel(port: int) -> socket.socket:
    """An established CONNECT tunnel to allowed.test:443 (the origin waits for a hello)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(HALF_HEAD + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


def test_the_loop_keeps_serving_while_hundreds_hold_half_sent_heads(world: World) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", world.proxy_port), timeout=30)
            sock.sendall(HALF_HEAD[: len(HALF_HEAD) // 2])  # and never the rest
            held.append(sock)
        for sock in held[::2]:  # a second trickle: still no blank line
            sock.sendall(HALF_HEAD[len(HALF_HEAD) // 2 : -2])
        started = time.monotonic()
        code, body, err = world.curl("https://allowed.test/x")
        took_connect = time.monotonic() - started
        assert code == 200, err
        assert world.names["allowed.test"] in body
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", world.proxy_port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert _answer(sock).startswith(b"HTTP/1.1 200 ")
        took_health = time.monotonic() - started
        # The slow ones are still waiting, neither answered nor dropped (their deadline
        # is the header timeout, 10 s here).
        held[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            held[0].recv(1)
    finally:
        for sock in held:
            sock.close()
    print(
        f"with {SLOW_CLIENTS} half-sent heads held: an HTTPS request through a new CONNECT "
        f"took {took_connect * 1000:.1f} ms, /healthz {took_health * 1000:.1f} ms"
    )


@pytest.fixture(scope="module")
def strict_proxy(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A second egress proxy with a 1 s header deadline and room for 3 connections."""
    log = Path(tmp_path_factory.mktemp("strict")) / "proxy.log"
    proxy, port = start_egress_proxy(
        world.net,
        world.controller.url,
        PROXY_TOKEN,
        world.ca.cert,
        (world.deploy_ca, world.deploy_key),
        log,
        {"SANDBOX_HEADER_READ_TIMEOUT": "1", "SANDBOX_MAX_CONNECTIONS": "3"},
    )
    try:
        yield port
    finally:
        stop_process(proxy)
    assert b"Traceback" not in log.read_bytes()


def test_a_half_sent_head_is_closed_at_the_header_deadline(strict_proxy: int) -> None:
    with socket.create_connection(("127.0.0.1", strict_proxy), timeout=30) as sock:
        sock.sendall(HALF_HEAD)
        started = time.monotonic()
        assert _answer(sock) == b""  # closed, nothing said
    print(f"closed after {time.monotonic() - started:.2f} s (deadline 1 s)")
    # A client sending its head whole is served, and a tunnel outlives the deadline.
    with _tunnel(strict_proxy) as sock:
        time.sleep(1.5)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)


def test_connections_over_the_cap_are_answered_503(strict_proxy: int) -> None:
    tunnels = [_tunnel(strict_proxy) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", strict_proxy), timeout=30) as sock:
            answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        assert b'"overloaded"' in answer
    finally:
        for sock in tunnels:
            sock.close()
    # Room again once they are gone (the proxy sees the closes shortly).
    deadline = time.monotonic() + 20
    while True:
        try:
            with _tunnel(strict_proxy):
                break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
