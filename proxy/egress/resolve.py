"""Name resolution, once per connection: the addresses returned are the ones checked and
the only ones dialled, so a name that changes its answer (DNS rebinding) cannot slip a
private address in between the check and the connect.

Answers from SANDBOX_EGRESS_RESOLVER are kept for their TTL (at most MAX_TTL), as squid
and every stub resolver do: a cached answer is checked again on every use, so keeping
it lets nothing through that a fresh query would not."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

import aiodns
import aiodns.error

from sandbox_controller.egress_policy import IPAddress

MAX_TTL = 300.0
CACHE_MAX = 10_000


class ResolveFailed(Exception):
    pass


class Resolver:
    """Through ``server`` ("ip" or "ip:port", SANDBOX_EGRESS_RESOLVER) with c-ares, else
    the system's resolver (getaddrinfo, in the loop's thread pool)."""

    def __init__(self, server: str | None, timeout: float = 5.0) -> None:
        self._server = server
        self._timeout = timeout
        self._dns: aiodns.DNSResolver | None = None  # made in the loop: pycares needs it
        self._cache: dict[str, tuple[float, list[IPAddress]]] = {}

    def _channel(self) -> aiodns.DNSResolver:
        if self._dns is None:
            assert self._server is not None
            host, port = self._server, 53
            if self._server.count(":") == 1:
                host, _, port_text = self._server.partition(":")
                port = int(port_text)
            self._dns = aiodns.DNSResolver(
                nameservers=[host.strip("[]")], udp_port=port, tcp_port=port, timeout=2.0, tries=2
            )
        return self._dns

    async def resolve(self, host: str) -> list[IPAddress]:
        now = time.monotonic()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            return cached[1]
        ttl = 0.0
        try:
            async with asyncio.timeout(self._timeout):
                if self._server:
                    found, ttl = await self._ares(host)
                else:
                    found = await self._system(host)
        except (TimeoutError, OSError) as exc:
            raise ResolveFailed(str(exc)) from exc
        if not found:
            raise ResolveFailed(f"{host}: no address")
        # Order kept (the resolver's preference), duplicates dropped.
        found = list(dict.fromkeys(found))
        if ttl > 0:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[host] = (now + min(ttl, MAX_TTL), found)
        return found

    async def _ares(self, host: str) -> tuple[list[IPAddress], float]:
        """The A and AAAA answers, and the shortest TTL among them."""
        dns = self._channel()
        answers = await asyncio.gather(
            dns.query(host, "A"), dns.query(host, "AAAA"), return_exceptions=True
        )
        found: list[IPAddress] = []
        ttls: list[float] = []
        for answer in answers:
            if isinstance(answer, aiodns.error.DNSError):
                continue
            if isinstance(answer, BaseException):
                raise answer
            for record in answer:
                found.append(ipaddress.ip_address(record.host))
                ttls.append(float(record.ttl))
        return found, min(ttls, default=0.0)

    async def _system(self, host: str) -> list[IPAddress]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise ResolveFailed(str(exc)) from exc
        return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]

    def close(self) -> None:
        if self._dns is not None:
            self._dns.cancel()
