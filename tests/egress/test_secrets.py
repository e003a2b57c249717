"""Secrets swapped in at the edge (issue 19, "Secrets"): the origin receives the real
value, the sandbox only ever sends and sees the placeholder, and a placeholder sent to
another host arrives unswapped and is counted as a leak attempt."""

from __future__ import annotations

import json
import socket

from .conftest import PLACEHOLDER, PLACEHOLDER2, SECRET2_VALUE, SECRET_VALUE, World


def _headers(entry: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {k.lower(): v for k, v in entry["headers"]}


def _metric(world: World, name: str) -> float:
    with socket.create_connection(("127.0.0.1", world.proxy_port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_https_to_the_secret_host_carries_the_real_value_upstream_only(world: World) -> None:
    swaps = _metric(world, "sandbox_egress_secret_swaps_total")
    code, body, err = world.curl(
        "https://api.secret.test/repos",
        "-i",
        "-H",
        f"Authorization: Bearer {PLACEHOLDER}",
    )
    assert code == 200, err
    assert SECRET_VALUE not in body  # the sandbox never sees it
    entry = world.received()[-1]
    assert entry["path"] == "/repos"
    assert _headers(entry)["authorization"] == f"Bearer {SECRET_VALUE}"
    assert _metric(world, "sandbox_egress_secret_swaps_total") == swaps + 1
    # The leaf the sandbox saw was signed by the deployment CA (curl trusted the bundle).
    assert json.loads(body.rpartition("\n\n")[2])["host"] == "api.secret.test"


def test_keep_alive_inside_an_intercepted_tunnel_swaps_every_request(world: World) -> None:
    before = len(world.received())
    code, _, err = world.curl(
        "https://api2.secret.test/a",
        "-H",
        f"X-Api-Key: {PLACEHOLDER2}",
        "--next",
        "--proxy",
        f"http://127.0.0.1:{world.proxy_port}",
        "--proxy-user",
        "pod-a:pw-a",
        "--cacert",
        str(world.bundle),
        "-H",
        f"X-Api-Key: {PLACEHOLDER2}",
        "-d",
        "body=1",
        "-w",
        "\n%{http_code} %{http_connect}",
        "https://api2.secret.test/b",
    )
    assert code == 200, err
    got = world.received()[before:]
    assert [e["path"] for e in got] == ["/a", "/b"]
    assert all(_headers(e)["x-api-key"] == SECRET2_VALUE for e in got)
    assert got[1]["body_bytes"] == 6


def test_plain_http_to_the_secret_host_is_swapped_too(world: World) -> None:
    code, _, err = world.curl(
        "http://api.secret.test/p", "-H", f"Authorization: Bearer {PLACEHOLDER}"
    )
    assert code == 200, err
    assert _headers(world.received()[-1])["authorization"] == f"Bearer {SECRET_VALUE}"


def test_a_placeholder_sent_elsewhere_arrives_unswapped_and_is_counted(world: World) -> None:
    leaks = _metric(world, "sandbox_egress_leak_attempts_total")
    # Plain HTTP to a host that is no secret's.
    code, _, err = world.curl("http://other.test/", "-H", f"Authorization: Bearer {PLACEHOLDER}")
    assert code == 200, err
    assert _headers(world.received()[-1])["authorization"] == f"Bearer {PLACEHOLDER}"
    # The first secret's placeholder to the second secret's (intercepted) host.
    code, _, err = world.curl("https://api2.secret.test/", "-H", f"X-Other: {PLACEHOLDER}")
    assert code == 200, err
    assert _headers(world.received()[-1])["x-other"] == PLACEHOLDER
    assert _metric(world, "sandbox_egress_leak_attempts_total") == leaks + 2


def test_other_hosts_are_tunnelled_untouched_under_their_own_certificate(world: World) -> None:
    # curl trusts only the fake internet's CA here: a leaf of ours would fail.
    code, _, err = world.curl("https://allowed.test/", "--cacert", str(world.ca.cert))
    assert code == 200, err


def test_no_secret_value_in_the_proxy_log(world: World) -> None:
    world.curl("https://api.secret.test/", "-H", f"Authorization: Bearer {PLACEHOLDER}")
    log = world.proxy_log.read_text()
    assert "kind=intercept" in log and "leak attempt" in log
    assert SECRET_VALUE not in log and SECRET2_VALUE not in log
    assert "/repos" not in log  # no path from inside a tunnel


def test_the_secret_goes_only_to_the_connect_host_and_plain_http_host_is_the_url(
    world: World,
) -> None:
    before = len(world.received())
    code, _, _ = world.curl(
        "https://api.secret.test/",
        "-H",
        "Host: another-tenant.test",
        "-H",
        f"Authorization: Bearer {PLACEHOLDER}",
    )
    assert code == 421
    assert len(world.received()) == before  # nothing reached the origin
    code, _, err = world.curl("http://allowed.test/", "-H", "Host: another-tenant.test")
    assert code == 200, err
    assert _headers(world.received()[-1])["host"] == "allowed.test"
