"""The pure parts of the egress proxy, without a network: what heads it refuses, and
what the swap does to a request's headers (including the shapes real clients send)."""

from __future__ import annotations

import base64

import pytest

from proxy.egress.common import basic_credentials, split_authority
from proxy.egress.controller import grant_of
from proxy.egress.heads import BadHead, body_framing, end_to_end, parse_head
from proxy.egress.swap import rewrite

SECRET = {
    "name": "GH",
    "placeholder": "PH1",
    "value": "real1",
    "hosts": ["api.github.com"],
    "header": "Authorization",
    "format": "Bearer {value}",
}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET\r\n\r\n", 400),
        (b"GET / HTTP/2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nSpace : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_heads_it_cannot_read_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BadHead) as caught:
        parse_head(raw)
    assert caught.value.status == status


def test_framing_refuses_smuggling_shapes() -> None:
    both = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(BadHead):
        body_framing(both)
    with pytest.raises(BadHead):
        body_framing(parse_head(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"))
    assert body_framing(parse_head(b"POST / HTTP/1.1\r\nContent-Length: 7\r\n\r\n")) == (
        "length",
        7,
    )


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    head = parse_head(
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: close, X-Private\r\n"
        b"X-Private: 1\r\nProxy-Authorization: Basic eA==\r\nKeep-Alive: 5\r\nAccept: */*\r\n\r\n"
    )
    assert end_to_end(head) == [("Host", "a"), ("Accept", "*/*")]


def test_authorities_and_credentials() -> None:
    assert split_authority("Example.COM.:443", None) == ("example.com", 443)
    assert split_authority("[::1]:8443", None) == ("::1", 8443)
    assert split_authority("a.test", 80) == ("a.test", 80)
    for bad in ("a.test", "a.test:0", "a.test:99999", "a b:1", "[::1:1"):
        with pytest.raises(BadHead):
            split_authority(bad, None)
    blob = base64.b64encode(b"pod:pass:word").decode()
    assert basic_credentials(f"Basic {blob}") == ("pod", "pass:word")
    assert basic_credentials("Bearer x") is None and basic_credentials("Basic !!") is None


def test_swap_on_the_secret_host_only_and_leaks_counted_elsewhere() -> None:
    grant = grant_of({"mode": "enforce", "allow": [], "secrets": [SECRET]})
    own = rewrite(grant.secrets, "api.github.com", 443, "/", [("Authorization", "Bearer PH1")])
    assert own.headers == [("Authorization", "Bearer real1")] and own.swapped == ["GH"]
    # git's shape ("token PH") and Basic credentials carrying the placeholder.
    token = rewrite(grant.secrets, "api.github.com", 443, "/", [("authorization", "token PH1")])
    assert token.headers == [("authorization", "token real1")]
    basic = base64.b64encode(b"x-access-token:PH1").decode()
    swapped = rewrite(
        grant.secrets, "api.github.com", 443, "/", [("Authorization", f"Basic {basic}")]
    )
    assert base64.b64decode(swapped.headers[0][1].split()[1]) == b"x-access-token:real1"
    # Another host: left as it is, and named as a leak (in a header or in the target).
    elsewhere = rewrite(grant.secrets, "evil.test", 443, "/?t=PH1", [("X-A", "b")])
    assert elsewhere.headers == [("X-A", "b")] and elsewhere.leaked == ["GH"]
    # The right host on a port the secret's pattern does not name: no swap.
    other_port = rewrite(
        grant.secrets, "api.github.com", 8443, "/", [("Authorization", "Bearer PH1")]
    )
    assert other_port.swapped == [] and other_port.headers == [("Authorization", "Bearer PH1")]


def test_an_unreadable_answer_allows_less_never_more() -> None:
    grant = grant_of(
        {"mode": "permissive", "allow": ["ok.test", "https://bad"], "deny_cidrs": ["x"]}
    )
    assert grant.mode == "enforce"
    assert [str(p) for p in grant.allow] == ["ok.test"] and grant.deny_cidrs == ()
