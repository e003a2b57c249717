"""egress_policy: patterns, matching, grantability, always-denied addresses, decisions."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_controller.egress_policy import (
    DENIED_CIDR,
    NOT_ALLOWED,
    PORT_NOT_ALLOWED,
    PRIVATE_ADDRESS,
    RESOLVE_FAILED,
    HostPattern,
    PatternError,
    address_denial,
    always_denied_kind,
    decide,
    is_grantable,
    matches_any,
    parse_cidrs,
    parse_ip,
    parse_pattern,
    parse_patterns,
    within,
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pypi.org", HostPattern("pypi.org")),
        ("PyPI.org.", HostPattern("pypi.org")),
        ("*.github.com", HostPattern("github.com", wildcard=True)),
        ("registry.npmjs.org:8443", HostPattern("registry.npmjs.org", port=8443)),
        ("203.0.113.5", HostPattern("203.0.113.5", ip=True)),
        ("203.0.113.5:22", HostPattern("203.0.113.5", port=22, ip=True)),
        ("2001:DB8::0001", HostPattern("2001:db8::1", ip=True)),
        ("[2001:db8::1]:8443", HostPattern("2001:db8::1", port=8443, ip=True)),
        ("_acme.example.com", HostPattern("_acme.example.com")),
    ],
)
def test_parse_pattern(text: str, expected: HostPattern) -> None:
    assert parse_pattern(text) == expected
    assert parse_pattern(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("*", "not a host pattern"),
        ("*.", "not a host pattern"),
        ("*.*", "'*' only"),
        ("a.*.com", "'*' only"),
        ("*example.com", "'*' only"),
        ("https://pypi.org", "not a URL"),
        ("pypi.org/simple", "not a URL"),
        ("pypi.org:0", "port"),
        ("pypi.org:65536", "port"),
        ("pypi.org:http", "port"),
        ("-bad.example.com", "label"),
        ("a..b", "label"),
        ("[203.0.113.5]", "IPv6"),
        ("[2001:db8::1", "unclosed"),
        ("2001:db8::zz", "IPv6"),
        ("1.2.3.999", "IPv4"),
        ("x" * 64 + ".com", "label"),
    ],
)
def test_bad_patterns_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(PatternError, match=says):
        parse_pattern(text)


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@pytest.mark.parametrize(
    "host",
    [
        "bulk.test",
        "203.0.113.5",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "017.0.0.1",
        "1.2.3.4.",
        "\u0661.2.3.4",
        "\u00b9.2.3.4",
        "",
        ".",
        "1..2.3",
        "10.0.0.256",
    ],
)
def test_parse_ip_fast_path_agrees_with_ipaddress(host: str) -> None:
    # An IP-literal host must be checked as the address it is: the shortcut for names
    # may never call an address a name (nor the reverse).
    assert parse_ip(host) == _ip_or_none(host)


@given(st.text(alphabet="0123456789.:abcdefx\u0661\u00b9%[]", max_size=24))
def test_parse_ip_fast_path_agrees_on_anything(host: str) -> None:
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    assert parse_ip(host) == (None if "%" in inner else _ip_or_none(inner))


def test_matching() -> None:
    allow = parse_patterns("pypi.org, *.github.com registry.npmjs.org:8443,203.0.113.5")
    assert matches_any(allow, "pypi.org", 443)
    assert matches_any(allow, "PYPI.ORG.", 80)
    assert not matches_any(allow, "pypi.org", 22)  # no port: only 80 and 443
    assert not matches_any(allow, "files.pypi.org", 443)
    assert matches_any(allow, "api.github.com", 443)
    assert matches_any(allow, "a.b.c.github.com", 443)
    assert not matches_any(allow, "github.com", 443)  # a wildcard is not its bare suffix
    assert not matches_any(allow, "evilgithub.com", 443)
    assert matches_any(allow, "registry.npmjs.org", 8443)
    assert not matches_any(allow, "registry.npmjs.org", 443)
    assert matches_any(allow, "203.0.113.5", 443)
    assert not matches_any(allow, "203.0.113.6", 443)


def test_duplicates_kept_once() -> None:
    assert parse_patterns(["pypi.org", "PYPI.org", "pypi.org."]) == (HostPattern("pypi.org"),)


def test_within_examples() -> None:
    p = parse_pattern
    assert within(p("api.github.com"), p("*.github.com"))
    assert within(p("*.x.github.com"), p("*.github.com"))
    assert within(p("*.github.com"), p("*.github.com"))
    assert not within(p("*.github.com"), p("api.github.com"))
    assert not within(p("*.github.com"), p("*.x.github.com"))
    assert not within(p("github.com"), p("*.github.com"))
    assert not within(p("api.github.com:22"), p("*.github.com"))
    assert within(p("api.github.com:443"), p("*.github.com"))
    assert not within(p("api.github.com"), p("*.github.com:443"))  # 80 is not within
    assert within(p("203.0.113.5:443"), p("203.0.113.5"))
    assert not within(p("203.0.113.5"), p("*.github.com"))
    assert is_grantable(p("api.github.com"), parse_patterns("pypi.org,*.github.com"))
    assert not is_grantable(p("api.gitlab.com"), parse_patterns("pypi.org,*.github.com"))
    assert not is_grantable(p("pypi.org"), ())


_labels = st.sampled_from(["a", "b", "api", "x", "github", "com", "io"])
_names = st.lists(_labels, min_size=1, max_size=4).map(".".join)
_ports = st.sampled_from([None, 80, 443, 8443])


@st.composite
def patterns(draw: st.DrawFn) -> HostPattern:
    return HostPattern(draw(_names), wildcard=draw(st.booleans()), port=draw(_ports))


@given(inner=patterns(), outer=patterns(), host=_names, port=st.sampled_from([22, 80, 443, 8443]))
def test_within_means_every_match_of_inner_is_a_match_of_outer(
    inner: HostPattern, outer: HostPattern, host: str, port: int
) -> None:
    if within(inner, outer) and inner.matches(host, port):
        assert outer.matches(host, port)


@given(inner=patterns(), outer=patterns())
def test_within_is_exact_for_exact_hosts(inner: HostPattern, outer: HostPattern) -> None:
    # An exact inner host is within outer exactly when outer matches it on each of its ports.
    if not inner.wildcard:
        expected = all(outer.matches(inner.host, port) for port in inner.ports)
        assert within(inner, outer) == expected


@given(pattern=patterns())
def test_printed_pattern_parses_back(pattern: HostPattern) -> None:
    assert parse_pattern(str(pattern)) == pattern
    assert within(pattern, pattern)


@given(pattern=patterns(), host=_names, port=st.sampled_from([80, 443, 8443]))
def test_matching_ignores_case_and_the_trailing_dot(
    pattern: HostPattern, host: str, port: int
) -> None:
    assert matches_any([pattern], host.upper() + ".", port) == pattern.matches(host, port)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.20.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link_local"),
        ("100.64.0.1", "cgnat"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fd12::1", "private"),
        ("fe80::1", "link_local"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link_local"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("203.0.113.5", None),
        ("198.51.100.1", None),
        ("8.8.8.8", None),
        ("2001:db8::1", None),
        ("::ffff:203.0.113.5", None),
    ],
)
def test_always_denied_kinds(address: str, kind: str | None) -> None:
    assert always_denied_kind(ip(address)) == kind
    assert address_denial(ip(address)) == (PRIVATE_ADDRESS if kind else None)


def test_deny_cidrs() -> None:
    cidrs = parse_cidrs("203.0.113.0/28, 2001:db8:1::/48 198.51.100.7")
    assert address_denial(ip("203.0.113.5"), cidrs) == DENIED_CIDR
    assert address_denial(ip("::ffff:203.0.113.5"), cidrs) == DENIED_CIDR
    assert address_denial(ip("203.0.113.20"), cidrs) is None
    assert address_denial(ip("2001:db8:1::5"), cidrs) == DENIED_CIDR
    assert address_denial(ip("198.51.100.7"), cidrs) == DENIED_CIDR
    with pytest.raises(PatternError, match="not a CIDR"):
        parse_cidrs("10.0.0.0/33")


PUBLIC = [ip("203.0.113.5")]


def test_decide_enforce() -> None:
    allow = parse_patterns("pypi.org,*.github.com")
    ok = decide("enforce", allow, "pypi.org", 443, PUBLIC)
    assert (ok.decision, ok.reason, ok.addresses) == ("allowed", None, tuple(PUBLIC))
    assert decide("enforce", allow, "example.com", 443, PUBLIC).reason == NOT_ALLOWED
    denied = decide("enforce", allow, "pypi.org", 22, PUBLIC)
    assert (denied.decision, denied.reason) == ("denied", PORT_NOT_ALLOWED)
    assert decide("enforce", allow, "pypi.org", 443, []).reason == RESOLVE_FAILED
    private = decide("enforce", allow, "pypi.org", 443, [ip("169.254.169.254")])
    assert (private.allowed, private.reason) == (False, PRIVATE_ADDRESS)
    # A name resolving to both: only the public address may be connected to.
    mixed = decide("enforce", allow, "pypi.org", 443, [ip("10.0.0.1"), ip("203.0.113.5")])
    assert mixed.allowed and mixed.addresses == (ip("203.0.113.5"),)
    cidr = decide("enforce", allow, "pypi.org", 443, PUBLIC, parse_cidrs("203.0.113.0/24"))
    assert cidr.reason == DENIED_CIDR


def test_decide_audit_and_off() -> None:
    allow = parse_patterns("pypi.org")
    audit = decide("audit", allow, "example.com", 443, PUBLIC)
    assert (audit.allowed, audit.decision, audit.reason) == (True, "audit_denied", NOT_ALLOWED)
    assert decide("audit", allow, "pypi.org", 443, PUBLIC).decision == "allowed"
    # The always-denied ranges hold in audit and off too.
    assert not decide("audit", allow, "example.com", 443, [ip("127.0.0.1")]).allowed
    assert decide("off", (), "example.com", 22, PUBLIC).decision == "allowed"
    assert decide("off", (), "example.com", 443, [ip("10.0.0.1")]).reason == PRIVATE_ADDRESS
    # IP literals: the caller passes the literal's own address.
    literal = decide("enforce", parse_patterns("203.0.113.5"), "203.0.113.5", 443, PUBLIC)
    assert literal.allowed
    assert not decide(
        "enforce", parse_patterns("127.0.0.1"), "127.0.0.1", 443, [ip("127.0.0.1")]
    ).allowed
