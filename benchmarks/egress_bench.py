"""Side-by-side egress benchmark (issue 19): this egress proxy vs Debian's squid with the
equivalent allow-list (a dstdomain ACL; CONNECT to the same ports) vs a direct
connection, all to the same origin in a fake internet (tests/egress/fakenet.py: a
network namespace, dnsmasq as the resolver of both proxies).

    python benchmarks/egress_bench.py [--rounds 3] [--seconds 3] [--write]

Needs root (network namespaces), dnsmasq and squid (``apt-get install dnsmasq squid``).
Measures, targets interleaved round by round and medians reported (the machine is
shared): CONNECT set-up latency p50/p99 (sequential, to an open port), bulk throughput
through one tunnel (MB/s), plain-HTTP forwarding requests/s (keep-alive, concurrent
connections), TLS requests/s through a CONNECT (pass-through, and for this proxy also
intercepted: a secret's host, with the swap), and RSS with 1,000 open tunnels. The
egress proxy authenticates every request (answers cached for their ttl); squid has no
authentication configured, which favours squid.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, rss_mib, stop  # noqa: E402
from sandbox_controller.egress_ca import ensure_ca  # noqa: E402
from tests.egress.fakenet import FakeNet, available, make_test_ca  # noqa: E402

USER, PASSWORD = "bench-pod", "bench-password"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PLACEHOLDER = "bench-placeholder"
Target = tuple[str, int] | None  # a proxy's address; None: direct


def authorize_answer() -> dict[str, Any]:
    return {
        "pod": USER,
        "session_id": "bench",
        "mode": "enforce",
        "allow": ["bulk.test", "bulk.test:9000", "bulk.test:9001", "secret.test"],
        "deny_cidrs": [],
        "secrets": [
            {
                "name": "TOKEN",
                "placeholder": PLACEHOLDER,
                "value": "bench-real-value",
                "hosts": ["secret.test"],
                "header": "Authorization",
                "format": "Bearer {value}",
            }
        ],
        "ttl": 60.0,
    }


def fake_controller() -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            data = b"" if "denials" in self.path else json.dumps(authorize_answer()).encode()
            self.send_response(204 if not data else 200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {tmp}/squid.pid
cache_log {tmp}/squid-cache.log
access_log stdio:{tmp}/squid-access.log
cache deny all
cache_mem 8 MB
dns_nameservers {resolver}
max_filedescriptors 16384
shutdown_lifetime 1 seconds
coredump_dir {tmp}
via off
forwarded_for delete
acl allowed dstdomain bulk.test secret.test
acl tunnel_ports port 443 9000 9001
acl web_ports port 80 443
acl CONNECT method CONNECT
http_access deny CONNECT !tunnel_ports
http_access allow CONNECT allowed
http_access allow allowed web_ports
http_access deny all
"""


async def open_tunnel(target: Target, host: str, ip: str, port: int, limit: int = 2**16):  # type: ignore[no-untyped-def]
    if target is None:
        return await asyncio.open_connection(ip, port, limit=limit)
    reader, writer = await asyncio.open_connection(*target, limit=limit)
    writer.write(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: {AUTH}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"CONNECT refused: {head[:60]!r}")
    return reader, writer


async def connect_latency(target: Target, ip: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        _, writer = await open_tunnel(target, "bulk.test", ip, 9001)
        times.append(time.perf_counter() - t0)
        writer.close()
    return times


class Sink(asyncio.Protocol):
    """Counts what arrives: a stream reader would be the bottleneck (about 80 MB/s here,
    where a protocol takes 350+)."""

    def __init__(self, want: int) -> None:
        self.want, self.got = want, 0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.started = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.want and not self.done.done():
            self.done.set_result(time.perf_counter() - self.started)


async def bulk(target: Target, ip: str, mib: int) -> float:
    """MB/s through one tunnel, timed from its first byte to ``mib`` MiB."""
    reader, writer = await open_tunnel(target, "bulk.test", ip, 9000, limit=1 << 20)
    sink = Sink(mib << 20)
    buffered = bytes(reader._buffer)  # type: ignore[attr-defined]
    writer.transport.set_protocol(sink)
    sink.data_received(buffered)
    writer.transport.resume_reading()
    elapsed = await sink.done
    writer.transport.abort()
    return sink.got / elapsed / 1e6


async def for_seconds(
    seconds: float,
    workers: int,
    make: Callable[[], Coroutine[Any, Any, Callable[[], Coroutine[Any, Any, None]]]],
) -> float:
    """Requests a second: ``workers`` loops, each set up by ``make`` (not timed), each
    then calling its request function until ``seconds`` have passed."""
    steps = await asyncio.gather(*(make() for _ in range(workers)))
    count = 0
    deadline = time.perf_counter() + seconds

    async def loop(step: Callable[[], Coroutine[Any, Any, None]]) -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await step()
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(s) for s in steps))
    return count / (time.perf_counter() - t0)


async def http_rps(target: Target, ip: str, seconds: float, workers: int) -> float:
    if target is None:
        request = b"GET / HTTP/1.1\r\nHost: bulk.test\r\n\r\n"
    else:
        request = (
            f"GET http://bulk.test/ HTTP/1.1\r\nHost: bulk.test\r\n"
            f"Proxy-Authorization: {AUTH}\r\n\r\n"
        ).encode()

    async def make() -> Callable[[], Coroutine[Any, Any, None]]:
        reader, writer = await asyncio.open_connection(*(target or (ip, 80)))

        async def step() -> None:
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)

        return step

    return await for_seconds(seconds, workers, make)


async def tls_rps(
    target: Target, host: str, ip: str, ctx: ssl.SSLContext, seconds: float, workers: int
) -> float:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {PLACEHOLDER}\r\n\r\n"

    async def make() -> Callable[[], Coroutine[Any, Any, None]]:
        reader, writer = await open_tunnel(target, host, ip, 443)
        await writer.start_tls(ctx, server_hostname=host)

        async def step() -> None:
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)

        return step

    return await for_seconds(seconds, workers, make)


def tree_rss(pid: int) -> float:
    """VmRSS of a process and its children (squid's coordinator and kid), MiB."""
    total = rss_mib(pid)[0]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        total += tree_rss(int(child))
    return total


async def rss_with_tunnels(target: Target, ip: str, pid: int, n: int) -> tuple[float, float]:
    idle = tree_rss(pid)
    sem = asyncio.Semaphore(50)

    async def one() -> asyncio.StreamWriter:
        async with sem:
            return (await open_tunnel(target, "bulk.test", ip, 9001))[1]

    writers = await asyncio.gather(*(one() for _ in range(n)))
    await asyncio.sleep(0.5)
    loaded = tree_rss(pid)
    for w in writers:
        w.close()
    return idle, loaded


def wait_port(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def measure(
    args: argparse.Namespace,
    targets: dict[str, Target],
    ip: str,
    pids: dict[str, int],
    ctx: ssl.SSLContext,
) -> dict[str, dict[str, list[float]]]:
    results: dict[str, dict[str, list[float]]] = {name: {} for name in targets}

    def add(name: str, key: str, value: float) -> None:
        results[name].setdefault(key, []).append(value)

    for rnd in range(args.rounds):
        for name, target in targets.items():
            lat = await connect_latency(target, ip, args.connects)
            add(name, "connect_p50_ms", pct(lat, 0.5) * 1000)
            add(name, "connect_p99_ms", pct(lat, 0.99) * 1000)
            add(name, "bulk_mbs", await bulk(target, ip, args.bulk_mib))
            add(name, "http_rps", await http_rps(target, ip, args.seconds, args.workers))
            add(
                name,
                "tls_pass_rps",
                await tls_rps(target, "bulk.test", ip, ctx, args.seconds, args.workers),
            )
            if name == "egress proxy":
                add(
                    name,
                    "tls_intercept_rps",
                    await tls_rps(target, "secret.test", ip, ctx, args.seconds, args.workers),
                )
            print(
                f"round {rnd + 1} {name}: "
                + ", ".join(f"{k}={v[-1]:.1f}" for k, v in results[name].items()),
                flush=True,
            )
    for name, target in targets.items():
        if target is not None:
            idle, loaded = await rss_with_tunnels(target, ip, pids[name], args.tunnels)
            add(name, "rss_idle_mib", idle)
            add(name, "rss_tunnels_mib", loaded)
    return results


def tree_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process and its children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        more = tree_cpu(int(child))
        user, system = user + more[0], system + more[1]
    return user, system


async def setup_cost(
    args: argparse.Namespace, targets: dict[str, Target], ip: str, pids: dict[str, int]
) -> dict[str, dict[str, list[float]]]:
    """CONNECT set-up only (--setup-only): p50 and each proxy's CPU per CONNECT, the two
    proxies alternating round by round; with --strace, a last pass per proxy under
    ``strace -c -f`` (its syscall counts per CONNECT; strace slows what it traces, so
    that pass is not timed)."""
    results: dict[str, dict[str, list[float]]] = {name: {} for name in pids}
    for rnd in range(args.rounds):
        for name in pids:
            before = tree_cpu(pids[name])
            lat = await connect_latency(targets[name], ip, args.connects)
            after = tree_cpu(pids[name])
            user, system = (
                (a - b) / args.connects * 1e6 for a, b in zip(after, before, strict=True)
            )
            results[name].setdefault("connect_p50_ms", []).append(pct(lat, 0.5) * 1000)
            results[name].setdefault("user_us", []).append(user)
            results[name].setdefault("sys_us", []).append(system)
            print(
                f"round {rnd + 1} {name}: p50 {pct(lat, 0.5) * 1000:.3f} ms, "
                f"CPU per CONNECT {user:.0f} us user + {system:.0f} us sys"
            )
    if args.strace:
        for name in pids:
            out = Path(tempfile.mkdtemp()) / "strace.txt"
            tracer = subprocess.Popen(
                ["strace", "-c", "-f", "-o", str(out), "-p", str(pids[name])],
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # attached
            await connect_latency(targets[name], ip, args.connects)
            await asyncio.sleep(0.5)
            tracer.send_signal(2)
            tracer.wait(10)
            print(f"\n{name}: strace -c -f over {args.connects} CONNECTs")
            print(out.read_text())
    for name, res in results.items():
        p50, user, system = (
            statistics.median(res[k]) for k in ("connect_p50_ms", "user_us", "sys_us")
        )
        print(
            f"{name}: median p50 {p50:.3f} ms, CPU per CONNECT {user:.0f} us user "
            f"+ {system:.0f} us sys (medians)"
        )
    return results


def table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    cols = [
        ("connect_p50_ms", "CONNECT p50 ms"),
        ("connect_p99_ms", "CONNECT p99 ms"),
        ("bulk_mbs", "bulk MB/s"),
        ("http_rps", "plain HTTP req/s"),
        ("tls_pass_rps", "TLS pass-through req/s"),
        ("tls_intercept_rps", "TLS intercepted req/s"),
        ("rss_idle_mib", "RSS idle MiB"),
        ("rss_tunnels_mib", f"RSS {args.tunnels} tunnels MiB"),
    ]
    lines = ["| target | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in results.items():
        cells = [f"{statistics.median(res[k]):.2f}" if k in res else "-" for k, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ours, squid = results["egress proxy"], results["squid"]
    med = lambda r, k: statistics.median(r[k])  # noqa: E731
    lines.append("")
    lines.append(
        f"egress/squid: CONNECT p50 {med(ours, 'connect_p50_ms') / med(squid, 'connect_p50_ms'):.2f}x "
        f"(target <= 1), bulk {med(ours, 'bulk_mbs') / med(squid, 'bulk_mbs'):.2f}x (target >= 0.8), "
        f"plain HTTP {med(ours, 'http_rps') / med(squid, 'http_rps'):.2f}x, "
        f"TLS pass-through {med(ours, 'tls_pass_rps') / med(squid, 'tls_pass_rps'):.2f}x; "
        f"intercepted/pass-through {med(ours, 'tls_intercept_rps') / med(ours, 'tls_pass_rps'):.2f}x; "
        f"RSS at {args.tunnels} tunnels {med(ours, 'rss_tunnels_mib'):.1f} MiB (target <= 100)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=16, help="concurrent connections")
    parser.add_argument("--connects", type=int, default=300)
    parser.add_argument("--bulk-mib", type=int, default=512)
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/egress.md")
    parser.add_argument(
        "--setup-only", action="store_true", help="CONNECT set-up p50 and CPU per CONNECT"
    )
    parser.add_argument("--strace", action="store_true", help="with --setup-only: strace -c")
    args = parser.parse_args()
    reason = available() or (None if shutil.which("squid") else "needs squid")
    if reason:
        sys.exit(f"egress_bench: {reason}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    tmp = Path(tempfile.mkdtemp(prefix="egress-bench-"))
    os.chmod(tmp, 0o777)  # squid drops to its own user and writes its logs here
    net = FakeNet(tmp)
    procs: list[subprocess.Popen[Any]] = []
    controller, controller_url = fake_controller()
    try:
        net.open()
        ip = net.public(1)
        ca = make_test_ca(tmp, ["bulk.test", "secret.test"], [ip, net.public(2)])
        # A TTL, so that both proxies may cache the answer (squid would even with none).
        net.dns({"bulk.test": [ip], "secret.test": [net.public(2)]}, ttl=60)
        net.run(
            sys.executable,
            str(ROOT / "benchmarks" / "egress_origin.py"),
            "--cert",
            str(ca.server_cert),
            "--key",
            str(ca.server_key),
            ready=b"ready",
        )
        deploy_cert, deploy_key = ensure_ca(tmp / "deploy-ca")
        bundle = tmp / "bundle.pem"
        bundle.write_bytes(ca.cert.read_bytes() + deploy_cert.read_bytes())
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(ROOT),
            "SANDBOX_CONTROLLER_URL": controller_url,
            "SANDBOX_PROXY_TOKEN": "egress-bench-proxy-token",
            "SANDBOX_EGRESS_RESOLVER": net.resolver,
            "SANDBOX_EGRESS_CA_CERT_FILE": str(deploy_cert),
            "SANDBOX_EGRESS_CA_KEY_FILE": str(deploy_key),
            "SANDBOX_STATE_DIR": str(tmp / "state"),
            "SSL_CERT_FILE": str(ca.cert),
        }
        ours_port, squid_port = free_port(), free_port()
        with open(tmp / "egress.log", "w") as log:
            ours = subprocess.Popen(
                [sys.executable, "-m", "proxy.egress", "--port", str(ours_port)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        procs.append(ours)
        conf = tmp / "squid.conf"
        conf.write_text(SQUID_CONF.format(port=squid_port, tmp=tmp, resolver=net.resolver))
        squid = subprocess.Popen(
            ["squid", "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        procs.append(squid)
        wait_port(ours_port, ours, "egress proxy")
        wait_port(squid_port, squid, "squid")
        ctx = ssl.create_default_context(cafile=str(bundle))
        targets: dict[str, Target] = {
            "direct": None,
            "egress proxy": ("127.0.0.1", ours_port),
            "squid": ("127.0.0.1", squid_port),
        }
        pids = {"egress proxy": ours.pid, "squid": squid.pid}
        if args.setup_only:
            uvloop.run(setup_cost(args, targets, ip, pids))
            return
        results = uvloop.run(measure(args, targets, ip, pids, ctx))
        out = table(results, args)
        print(out)
        if args.write:
            (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
            (ROOT / "benchmarks" / "results" / "egress.md").write_text(out + "\n")
    finally:
        for proc in procs:
            stop(proc)
        net.close()
        controller.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
