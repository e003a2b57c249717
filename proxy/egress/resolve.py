"""Name resolution, once per connection: the addresses returned are the ones checked and
the only ones dialled, so a name that changes its answer (DNS rebinding) cannot slip a
private address in between the check and the connect."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiodns
import aiodns.error

from sandbox_controller.egress_policy import IPAddress


class ResolveFailed(Exception):
    pass


class Resolver:
    """Through ``server`` ("ip" or "ip:port", SANDBOX_EGRESS_RESOLVER) with c-ares, else
    the system's resolver (getaddrinfo, in the loop's thread pool)."""

    def __init__(self, server: str | None, timeout: float = 5.0) -> None:
        self._server = server
        self._timeout = timeout
        self._dns: aiodns.DNSResolver | None = None  # made in the loop: pycares needs it

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
        try:
            async with asyncio.timeout(self._timeout):
                found = await (self._ares(host) if self._server else self._system(host))
        except (TimeoutError, OSError) as exc:
            raise ResolveFailed(str(exc)) from exc
        if not found:
            raise ResolveFailed(f"{host}: no address")
        # Order kept (the resolver's preference), duplicates dropped.
        return list(dict.fromkeys(found))

    async def _ares(self, host: str) -> list[IPAddress]:
        dns = self._channel()
        answers = await asyncio.gather(
            dns.query(host, "A"), dns.query(host, "AAAA"), return_exceptions=True
        )
        found: list[IPAddress] = []
        for answer in answers:
            if isinstance(answer, aiodns.error.DNSError):
                continue
            if isinstance(answer, BaseException):
                raise answer
            found.extend(ipaddress.ip_address(record.host) for record in answer)
        return found

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
