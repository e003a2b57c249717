"""A small fake internet in a network namespace of its own (tests and the benchmark).

One namespace per run, joined to the host by a veth pair; the host routes a /28 of
203.0.113.0/24 to it over a /28 of 198.51.100.0/24 (192.0.2.0/24 is left alone: CI's own
network may be there). The /28s are picked from the pid, skipping any that overlaps a
route the machine already has, so two runs on one machine do not collide. Inside: Debian's dnsmasq answering the names given, and whatever
servers the caller starts with ``run``. ``close`` removes all of it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def available() -> str | None:
    """Why the fake internet cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "dnsmasq", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/test.sh installs dnsmasq)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class FakeNet:
    directory: Path
    slot: int = 0
    ns: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def public(self, i: int) -> str:
        """The i-th (1..13) public-looking address in the namespace (203.0.113.x)."""
        return str(ipaddress.ip_address("203.0.113.0") + 16 * self.slot + i)

    @property
    def gateway(self) -> str:  # the host's end of the link
        return str(ipaddress.ip_address("198.51.100.0") + 16 * self.slot + 1)

    @property
    def resolver(self) -> str:  # the namespace's end, where dnsmasq listens
        return str(ipaddress.ip_address("198.51.100.0") + 16 * self.slot + 2)

    def open(self) -> FakeNet:
        pid = os.getpid()
        self.ns = f"e1n{pid}"
        host_if, ns_if = f"e1a{pid}", f"e1b{pid}"
        taken = _routed()
        for attempt in range(16):
            self.slot = (pid + attempt) % 16
            mine = [
                ipaddress.ip_network(f"{a}/28", strict=False)
                for a in (self.public(0), self.gateway)
            ]
            if not any(m.overlaps(t) for m in mine for t in taken):
                break
        else:
            raise RuntimeError("no free /28 in 203.0.113.0/24 and 198.51.100.0/24")
        _ip("netns", "add", self.ns)
        try:
            _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _ip("link", "set", ns_if, "netns", self.ns)
            _ip("addr", "add", f"{self.gateway}/28", "dev", host_if)
            _ip("link", "set", host_if, "up")
            inside = ["netns", "exec", self.ns, "ip"]
            _ip(*inside, "addr", "add", f"{self.resolver}/28", "dev", ns_if)
            for i in range(1, 14):
                _ip(*inside, "addr", "add", f"{self.public(i)}/32", "dev", ns_if)
            _ip(*inside, "link", "set", ns_if, "up")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "route", "add", "default", "via", self.gateway)
            _ip("route", "add", f"{self.public(0)}/28", "via", self.resolver)
        except BaseException:
            self.close()
            raise
        return self

    def run(self, *argv: str, ready: bytes | None = None, **kw: object) -> subprocess.Popen[bytes]:
        """A process inside the namespace; waits for ``ready`` on its stdout if given."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
            **kw,  # type: ignore[call-overload]
        )
        self.procs.append(proc)
        if ready:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if ready not in line:
                raise RuntimeError(f"{argv[0]} did not start: {line!r}")
        return proc

    def dns(self, records: dict[str, list[str]], ttl: int = 0) -> None:
        """dnsmasq on the resolver address answering exactly ``records`` (more than one
        address for a name: all are answered) with ``ttl``; any other name: NXDOMAIN."""
        hosts = self.directory / "dns-hosts"
        hosts.write_text("".join(f"{a} {n}\n" for n, addrs in records.items() for a in addrs))
        self.run(
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", f"--addn-hosts={hosts}", f"--listen-address={self.resolver}",
            "--bind-interfaces", "--user=root", "--cache-size=0", "--no-negcache",
            f"--local-ttl={ttl}",
            f"--pid-file={self.directory / 'dnsmasq.pid'}", "--local=/test/",
        )  # fmt: skip
        deadline = time.monotonic() + 10
        probe = next(iter(records))
        while time.monotonic() < deadline:
            if _udp_answers(self.resolver, probe):
                return
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer")

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.ns:
            _ip("route", "del", f"{self.public(0)}/28", check=False)
        _ip("link", "del", f"e1a{os.getpid()}", check=False)
        if self.ns:
            _ip("netns", "del", self.ns, check=False)


def _routed() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        dst = line.split()[0] if line.split() else ""
        if dst in ("default", "local", "broadcast", "unreachable"):
            dst = line.split()[1] if len(line.split()) > 1 else ""
        try:
            nets.append(ipaddress.ip_network(dst, strict=False))
        except ValueError:
            continue
    return [n for n in nets if n.prefixlen > 0]


def _udp_answers(server: str, name: str) -> bool:
    import socket
    import struct

    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(query, (server, 53))
            return len(sock.recv(512)) > 12
        except OSError:
            return False


@dataclass
class TestCA:
    """A CA for the fake internet's servers, and one certificate for all of them."""

    cert: Path
    server_cert: Path
    server_key: Path


def make_test_ca(directory: Path, names: list[str], addresses: list[str]) -> TestCA:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake internet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = TestCA(directory / "test-ca.pem", directory / "server.pem", directory / "server-key.pem")
    out.cert.write_bytes(ca.public_bytes(pem))
    out.server_cert.write_bytes(leaf.public_bytes(pem))
    out.server_key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out
