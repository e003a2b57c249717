"""Egress policy: host patterns, what they match, which addresses are never reachable,
and the decision for one connection. Pure: no I/O (the egress proxy resolves and
connects; the controller validates settings and grants with the same functions).

Patterns (README, "Control what sandboxes reach"): ``host``, ``*.suffix`` (any
subdomain depth, never the bare suffix), either with an optional ``:port``; without a
port only 80 and 443 match. IP literals are patterns too, matched exactly (IPv6 with a
port in brackets: ``[2001:db8::1]:8443``). Case-insensitive; a trailing dot is ignored.

Always denied, whatever the lists say, for every address a name resolves to and for IP
literals: loopback, RFC 1918, link-local (cloud metadata at 169.254.169.254), CGNAT,
multicast, unspecified, 0/8, reserved and broadcast, IPv6 loopback, ULA, link-local and
site-local, and IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4) classified
by that address; plus the deployment's deny CIDRs. The documentation ranges
(192.0.2.0/24 and the like) are deliberately NOT denied: they stand for the public
internet in tests, and nothing routes them in production anyway.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Mode = Literal["off", "audit", "enforce"]
DecisionKind = Literal["allowed", "denied", "audit_denied"]

# Deny reasons (EGRESS.md seam 3): log lines, denial records, GET /sessions/{id}/egress.
NOT_ALLOWED = "not_allowed"
PRIVATE_ADDRESS = "private_address"
DENIED_CIDR = "denied_cidr"
PORT_NOT_ALLOWED = "port_not_allowed"
RESOLVE_FAILED = "resolve_failed"
SESSION_ENDED = "session_ended"
UNAUTHENTICATED = "unauthenticated"
DENY_REASONS = frozenset(
    {
        NOT_ALLOWED,
        PRIVATE_ADDRESS,
        DENIED_CIDR,
        PORT_NOT_ALLOWED,
        RESOLVE_FAILED,
        SESSION_ENDED,
        UNAUTHENTICATED,
    }
)
# A pattern without a port: the web's two ports, nothing else (no SMTP, no SSH).
DEFAULT_PORTS = frozenset({80, 443})
MAX_PATTERN = 260  # a 253-character name, a colon and a port

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class PatternError(ValueError):
    """A host pattern that is not one; the message says what is wrong with it."""


@dataclass(frozen=True)
class HostPattern:
    """One parsed pattern. ``host`` is lower-case without a trailing dot; for a wildcard
    it is the suffix (``*.github.com`` has host ``github.com``); for an IP literal it is
    the address's canonical text."""

    host: str
    wildcard: bool = False
    port: int | None = None
    ip: bool = False

    @property
    def ports(self) -> frozenset[int]:
        return DEFAULT_PORTS if self.port is None else frozenset({self.port})

    def matches_host(self, host: str) -> bool:
        """Whether ``host`` (already normalised: see ``normalize_host``) is this
        pattern's, whatever the port."""
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def matches(self, host: str, port: int) -> bool:
        # As ``port in self.ports``, without building a set per call.
        if port != self.port and (self.port is not None or port not in DEFAULT_PORTS):
            return False
        return self.matches_host(host)

    def __str__(self) -> str:
        host = ("*." + self.host) if self.wildcard else self.host
        if self.ip and ":" in host and self.port is not None:
            host = f"[{host}]"
        return host if self.port is None else f"{host}:{self.port}"


def normalize_host(host: str) -> str:
    """A host as patterns compare it: lower-case, no trailing dot, an IP literal in its
    canonical form (brackets dropped), so ``[2001:DB8::0001]`` is ``2001:db8::1``."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith("."):
        host = host[:-1]
    address = parse_ip(host)
    return str(address) if address is not None else host


def parse_ip(host: str) -> IPAddress | None:
    """The address an IP-literal host names (brackets allowed), else None. Only the
    canonical dotted-quad form for IPv4: ``0x7f.1`` and ``017.0.0.1`` are not addresses
    here (a resolver or libc might read them as 127.0.0.1; the proxy treats them as
    names, which do not resolve)."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if "%" in host:  # a zone id: link-local by definition; refuse as a name
        return None
    if ":" not in host and not host.replace(".", "").isdigit():
        # Not an address: IPv6 needs a colon, IPv4 only digits and dots. Said here, as
        # ipaddress would say it, without its two exceptions (4 us; a name is checked
        # several times per CONNECT).
        return None
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _parse_port(text: str, pattern: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise PatternError(f"{pattern!r}: the port must be a number from 1 to 65535")
    return int(text)


def parse_pattern(text: str) -> HostPattern:
    """One pattern; PatternError naming it and what is wrong otherwise."""
    raw = text.strip()
    if not raw:
        raise PatternError("an empty host pattern")
    if len(raw) > MAX_PATTERN:
        raise PatternError(f"{raw[:40]!r}...: a host pattern is at most {MAX_PATTERN} characters")
    if any(c in raw for c in "/@?#\\ \t"):
        raise PatternError(f"{raw!r}: a host pattern is a host name, not a URL")
    port: int | None = None
    host = raw
    if raw.startswith("["):  # [v6] or [v6]:port
        close = raw.find("]")
        if close < 0:
            raise PatternError(f"{raw!r}: an unclosed '['")
        host, rest = raw[1:close], raw[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise PatternError(f"{raw!r}: only ':port' may follow ']'")
            port = _parse_port(rest[1:], raw)
        address = parse_ip(host)
        if not isinstance(address, ipaddress.IPv6Address):
            raise PatternError(f"{raw!r}: brackets hold an IPv6 address")
        return HostPattern(str(address), port=port, ip=True)
    if raw.count(":") > 1:  # a bare IPv6 literal (no port: brackets give one)
        address = parse_ip(raw)
        if address is None:
            raise PatternError(f"{raw!r}: not a host, and not an IPv6 address")
        return HostPattern(str(address), ip=True)
    if ":" in raw:
        host, _, port_text = raw.partition(":")
        port = _parse_port(port_text, raw)
    address = parse_ip(host)
    if address is not None:
        return HostPattern(str(address), port=port, ip=True)
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if host in ("*", "*."):
        raise PatternError(
            f"{raw!r}: not a host pattern ('*' alone matches nothing; audit mode lets the public through)"
        )
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise PatternError(f"{raw!r}: '*' only as a whole first label ('*.example.com')")
    if not name or len(name) > 253:
        raise PatternError(f"{raw!r}: not a host name")
    labels = name.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise PatternError(
                f"{raw!r}: {label!r} is not a host-name label (letters, digits, '-', '_';"
                " 1 to 63 characters; not starting or ending with '-')"
            )
    if labels[-1].isdigit():
        raise PatternError(f"{raw!r}: neither a host name nor an IPv4 address")
    return HostPattern(name, wildcard=wildcard, port=port)


def split_patterns(text: str | Iterable[str]) -> list[str]:
    """A setting's comma- or whitespace-separated patterns, or a list as given."""
    if isinstance(text, str):
        return [p for p in re.split(r"[,\s]+", text) if p]
    return list(text)


def parse_patterns(text: str | Iterable[str]) -> tuple[HostPattern, ...]:
    """Every pattern of a setting or a list, duplicates kept once, in order; the first
    bad one raises PatternError."""
    found: list[HostPattern] = []
    for entry in split_patterns(text):
        pattern = parse_pattern(entry)
        if pattern not in found:
            found.append(pattern)
    return tuple(found)


def matches_any(patterns: Iterable[HostPattern], host: str, port: int) -> bool:
    host = normalize_host(host)
    return any(p.matches(host, port) for p in patterns)


def within(inner: HostPattern, outer: HostPattern) -> bool:
    """Whether everything ``inner`` matches, ``outer`` matches too: ``api.github.com``
    and ``*.x.github.com`` are within ``*.github.com``; ``*.github.com`` is not within
    ``api.github.com``, nor ``github.com`` within ``*.github.com``."""
    if not inner.ports <= outer.ports:
        return False
    if inner.ip or outer.ip:
        return inner.ip and outer.ip and inner.host == outer.host
    if not outer.wildcard:
        return not inner.wildcard and inner.host == outer.host
    return inner.host.endswith("." + outer.host) or (inner.wildcard and inner.host == outer.host)


def is_grantable(pattern: HostPattern, grantable: Iterable[HostPattern]) -> bool:
    """Whether a caller may grant ``pattern``: it falls within one grantable pattern."""
    return any(within(pattern, g) for g in grantable)


def parse_cidrs(text: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """Deny CIDRs (``10.96.0.0/12``, ``fd00::/8``, a bare address for one host);
    PatternError naming the bad entry."""
    found: list[IPNetwork] = []
    for entry in split_patterns(text):
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise PatternError(f"{entry!r}: not a CIDR (e.g. 10.96.0.0/12)") from None
    return tuple(found)


_ALWAYS_DENIED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), kind)
    for net, kind in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link_local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # holds the broadcast address 255.255.255.255
    )
)
_ALWAYS_DENIED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind)
    for net, kind in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private"),  # unique local
        ("fe80::/10", "link_local"),
        ("fec0::/10", "private"),  # site-local (deprecated, still routed by some)
        ("ff00::/8", "multicast"),
        ("100::/64", "reserved"),  # discard-only
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, compatible), if any:
    connecting to it may reach that IPv4 address, so it is judged as that address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64 or (address in _V4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def always_denied_kind(address: IPAddress) -> str | None:
    """What kind of never-reachable address this is (``loopback``, ``private``,
    ``link_local``, ``cgnat``, ``multicast``, ``unspecified``, ``reserved``), or None for
    a public one. For logs; the deny reason is always ``private_address``."""
    if isinstance(address, ipaddress.IPv6Address):
        for net6, kind in _ALWAYS_DENIED_V6:
            if address in net6:
                return kind
        inner = embedded_ipv4(address)
        if inner is None:
            return None
        address = inner
    for net4, kind in _ALWAYS_DENIED_V4:
        if address in net4:
            return kind
    return None


def address_denial(address: IPAddress, deny_cidrs: Sequence[IPNetwork] = ()) -> str | None:
    """Why connecting to ``address`` is refused (``private_address``, ``denied_cidr``),
    or None. Deny CIDRs also catch an IPv6 address embedding an IPv4 one they hold."""
    if always_denied_kind(address) is not None:
        return PRIVATE_ADDRESS
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
    for net in deny_cidrs:
        if any(a.version == net.version and a in net for a in candidates):
            return DENIED_CIDR
    return None


@dataclass(frozen=True)
class Decision:
    """The verdict on one connection: ``allowed``, ``denied`` or ``audit_denied`` (audit
    mode lets it through but logs that enforce would not), the reason for anything but
    ``allowed``, and the addresses the proxy may connect to (only those: never resolve
    again, so a rebinding name cannot slip a private address in)."""

    decision: DecisionKind
    reason: str | None = None
    addresses: tuple[IPAddress, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision != "denied"


def decide_name(mode: Mode, allow: Sequence[HostPattern], host: str, port: int) -> Decision:
    """The verdict before resolution: whether the lists let ``host:port`` through. In
    ``enforce`` a host outside them is denied here, without a DNS query; in ``audit`` it
    is ``audit_denied``; in ``off`` the lists are not consulted."""
    if mode == "off":
        return Decision("allowed")
    name = normalize_host(host)
    if any(p.matches(name, port) for p in allow):
        return Decision("allowed")
    listed = any(p.matches_host(name) for p in allow)
    reason = PORT_NOT_ALLOWED if listed else NOT_ALLOWED
    return Decision("denied" if mode == "enforce" else "audit_denied", reason)


def decide_addresses(
    by_name: Decision, addresses: Sequence[IPAddress], deny_cidrs: Sequence[IPNetwork] = ()
) -> Decision:
    """The final verdict once the host is resolved (an IP literal: its own address).
    Only addresses that pass are kept; none passing is a denial in every mode (off and
    audit too: the always-denied ranges hold whatever the mode)."""
    if not by_name.allowed:
        return by_name
    if not addresses:
        return Decision("denied", RESOLVE_FAILED)
    usable: list[IPAddress] = []
    first_reason: str | None = None
    for address in addresses:
        reason = address_denial(address, deny_cidrs)
        if reason is None:
            usable.append(address)
        elif first_reason is None:
            first_reason = reason
    if not usable:
        return Decision("denied", first_reason)
    return Decision(by_name.decision, by_name.reason, tuple(usable))


def decide(
    mode: Mode,
    allow: Sequence[HostPattern],
    host: str,
    port: int,
    addresses: Sequence[IPAddress],
    deny_cidrs: Sequence[IPNetwork] = (),
) -> Decision:
    """``decide_name`` then ``decide_addresses``: the whole verdict in one call."""
    return decide_addresses(decide_name(mode, allow, host, port), addresses, deny_cidrs)
