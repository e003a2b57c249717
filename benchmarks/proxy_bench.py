"""Side-by-side proxy benchmark: direct, this proxy (path and subdomain mode),
configurable-http-proxy, nginx.

    python benchmarks/proxy_bench.py [--rounds 3] [--duration 10] [--connections 50]

Needs ``wrk`` and ``nginx`` (Debian packages) and configurable-http-proxy installed with
``npm install --prefix .cache/tools configurable-http-proxy``. Every target forwards to
the same upstreams: a single-worker nginx answering ``200 ok`` for HTTP (so the upstream
is not the bottleneck) and a ``websockets`` echo server for WebSocket round trips.
Targets are interleaved round by round and medians reported, because the machine is
shared. Writes nothing unless ``--write`` is given (then benchmarks/results/proxy.md, for benchmarks/README.md).

``--only-rss`` measures just this proxy's RSS (idle, then with ``--websockets`` open
through it), in both modes, the same way the full run does; it needs no wrk, nginx or
configurable-http-proxy, so each memory change can be measured in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox_controller.serving import KEEP_ALIVE_SECONDS, Server, bind  # noqa: E402
from sandbox_controller.tokens import issue_token  # noqa: E402

SECRET = "bench-secret"
API_TOKEN = "bench-api-token"
SESSION = "sess-bench"
DOMAIN = "sandbox.bench"  # subdomain mode: the session's host is sess-bench.sandbox.bench
CHP = ROOT / ".cache/tools/node_modules/.bin/configurable-http-proxy"
SUBDOMAIN = "this proxy, subdomain"
BASELINE = "baseline proxy"  # --baseline: another tree's proxy (path mode), for A/B

WS_ECHO = """
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None, ping_interval=None) as s:
        print("listening 127.0.0.1:%d" % s.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
import uvloop; uvloop.run(main())
"""

NGINX_UPSTREAM = """
worker_processes 1; pid {d}/up.pid; error_log {d}/up.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off;
  server {{ listen 127.0.0.1:{port}; keepalive_requests 100000;
    location / {{ return 200 "ok\\n"; }} }} }}
"""

NGINX_PROXY = """
worker_processes 1; pid {d}/px.pid; error_log {d}/px.err warn;
events {{ worker_connections 8192; }}
http {{ access_log off;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream http_up {{ server {http_up}; keepalive 64; }}
  upstream ws_up {{ server {ws_up}; }}
  server {{ listen 127.0.0.1:{port};
    location /s/{sid}/ws {{ proxy_pass http://ws_up/ws; proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade; proxy_read_timeout 1h; }}
    location /s/{sid}/ {{ proxy_pass http://http_up/; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }} }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def spawn_listening(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening "):
        raise RuntimeError(f"{args[:3]} did not start: {line!r}")
    return proc, line.split()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wrk(url: str, duration: int, connections: int, headers: dict[str, str]) -> tuple[float, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", url]
    for k, v in headers.items():
        args[1:1] = ["-H", f"{k}: {v}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert m, out
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    return rps, p99


def dial_kwargs(dial: str | None) -> dict[str, object]:
    """Where to connect when the URL's host has no DNS (a session host in subdomain mode)."""
    if dial is None:
        return {}
    host, _, port = dial.rpartition(":")
    return {"host": host, "port": int(port)}


async def ws_rtt(
    url: str, headers: dict[str, str], dial: str | None = None, n: int = 2000
) -> tuple[float, float]:
    samples = []
    async with connect(
        url, additional_headers=headers, compression=None, **dial_kwargs(dial)
    ) as ws:  # type: ignore[arg-type]
        for _ in range(50):
            await ws.send("warm")
            await ws.recv()
        for _ in range(n):
            t = time.perf_counter()
            await ws.send("x" * 32)
            await ws.recv()
            samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def open_many(
    url: str, headers: dict[str, str], count: int, dial: str | None = None
) -> list[object]:
    conns: list[object] = []
    for i in range(0, count, 100):
        batch = [
            connect(
                url,
                additional_headers=headers,
                compression=None,
                ping_interval=None,
                **dial_kwargs(dial),  # type: ignore[arg-type]
            )
            for _ in range(min(100, count - i))
        ]
        conns += await asyncio.gather(*batch)
    for ws in conns:  # each one carries a frame, so every relay is fully set up
        await ws.send("hi")  # type: ignore[attr-defined]
        await ws.recv()  # type: ignore[attr-defined]
    return conns


class Controller:
    """The controller's internal route API, reduced to the one session the bench uses."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def route(self, request: Request) -> Response:
        return JSONResponse({"session_id": SESSION, "state": "ready", "address": self.address})

    async def activity(self, request: Request) -> Response:
        return Response(status_code=204)


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--websockets", type=int, default=1000)
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/proxy.md")
    ap.add_argument("--only-rss", action="store_true", help="only this proxy's RSS")
    ap.add_argument(
        "--baseline", type=Path, help="a git worktree whose proxy runs beside this one (A/B)"
    )
    ap.add_argument(
        "--instructions",
        type=int,
        metavar="N",
        help="only: CPU instructions per request (valgrind callgrind), N requests per proxy",
    )
    args = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.only_rss:
        await only_rss(args.websockets)
        return
    if args.instructions:
        await instructions(args.instructions, args.baseline)
        return
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    token = issue_token(SECRET.encode(), SESSION, time.time() + 86400)
    auth = {"X-Sandbox-Token": token}

    async with contextlib.AsyncExitStack() as stack:
        procs = stack.enter_context(processes())
        # Upstreams, shared by every target.
        up_port = free_port()
        (tmp / "up.conf").write_text(NGINX_UPSTREAM.format(d=tmp, port=up_port))
        procs.append(
            subprocess.Popen(
                ["nginx", "-p", str(tmp), "-c", str(tmp / "up.conf"), "-g", "daemon off;"]
            )
        )
        wait_port(up_port)
        http_up = f"127.0.0.1:{up_port}"
        ws_proc, ws_up = spawn_listening([sys.executable, "-c", WS_ECHO])
        procs.append(ws_proc)

        # The controller for this proxy (the internal route API, in this process), and
        # this proxy in both modes.
        controller = Controller(http_up)
        ours, _ = await stack.enter_async_context(proxy_pair(controller, args.baseline))
        ours_addr, sub_addr = ours["this proxy"][1], ours[SUBDOMAIN][1]
        sub_host = f"{SESSION}.{DOMAIN}:{sub_addr.rpartition(':')[2]}"

        chp_port, chp_api = free_port(), free_port()
        chp_env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN="bench")
        procs.append(
            subprocess.Popen(
                [
                    str(CHP),
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(chp_port),
                    "--api-ip",
                    "127.0.0.1",
                    "--api-port",
                    str(chp_api),
                    "--log-level",
                    "error",
                ],
                env=chp_env,
            )
        )
        wait_port(chp_api)
        nginx_port = free_port()
        (tmp / "px.conf").write_text(
            NGINX_PROXY.format(d=tmp, port=nginx_port, http_up=http_up, ws_up=ws_up, sid=SESSION)
        )
        procs.append(
            subprocess.Popen(
                ["nginx", "-p", str(tmp), "-c", str(tmp / "px.conf"), "-g", "daemon off;"]
            )
        )
        wait_port(nginx_port)

        async with httpx.AsyncClient(trust_env=False) as client:
            # CHP keeps the route prefix on the way to the target, as JupyterHub expects;
            # the nginx upstream answers any path and the echo server any WS path.
            r = await client.post(
                f"http://127.0.0.1:{chp_api}/api/routes/s/{SESSION}",
                headers={"Authorization": "token bench"},
                json={"target": f"http://{http_up}"},
            )
            r.raise_for_status()

        http_targets = {
            "direct": (f"http://{http_up}/s/{SESSION}/healthz", {}),
            "this proxy": (f"http://{ours_addr}/s/{SESSION}/healthz", auth),
            SUBDOMAIN: (f"http://{sub_addr}/healthz", {**auth, "Host": sub_host}),
            "configurable-http-proxy": (f"http://127.0.0.1:{chp_port}/s/{SESSION}/healthz", {}),
            "nginx": (f"http://127.0.0.1:{nginx_port}/s/{SESSION}/healthz", {}),
        }
        if args.baseline is not None:
            base = f"http://{ours[BASELINE][1]}/s/{SESSION}/healthz"
            http_targets = _after_ours(http_targets, (base, auth))
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in http_targets}
        for url, headers in http_targets.values():  # warm-up (and a fail-fast check)
            await asyncio.to_thread(wrk, url, 1, 4, headers)
        for rnd in range(args.rounds):
            for name, (url, headers) in http_targets.items():
                # In a thread: this process's loop must keep serving the route API.
                run = await asyncio.to_thread(wrk, url, args.duration, args.connections, headers)
                results[name].append(run)
                print(f"round {rnd + 1} {name}: {results[name][-1]}", flush=True)

        # WS: CHP needs the echo target on its route; swap the route for this phase.
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.post(
                f"http://127.0.0.1:{chp_api}/api/routes/s/{SESSION}",
                headers={"Authorization": "token bench"},
                json={"target": f"http://{ws_up}"},
            )
            r.raise_for_status()
        controller.address = ws_up
        await asyncio.sleep(6)  # our route cache TTL: pick the WS upstream up
        ws_targets: dict[str, tuple[str, dict[str, str], str | None]] = {
            "direct": (f"ws://{ws_up}/ws", {}, None),
            "this proxy": (f"ws://{ours_addr}/s/{SESSION}/ws", auth, None),
            SUBDOMAIN: (f"ws://{sub_host}/ws", auth, sub_addr),
            "configurable-http-proxy": (f"ws://127.0.0.1:{chp_port}/s/{SESSION}/ws", {}, None),
            "nginx": (f"ws://127.0.0.1:{nginx_port}/s/{SESSION}/ws", {}, None),
        }
        if args.baseline is not None:
            base_ws = f"ws://{ours[BASELINE][1]}/s/{SESSION}/ws"
            ws_targets = _after_ours(ws_targets, (base_ws, auth, None))
        ws_results: dict[str, list[tuple[float, float]]] = {k: [] for k in ws_targets}
        for _ in range(args.rounds):
            for name, (url, headers, dial) in ws_targets.items():
                ws_results[name].append(await ws_rtt(url, headers, dial))
        rss: dict[str, tuple[float, float]] = {}
        for name, (proc, _addr) in ours.items():
            url, headers, dial = ws_targets[name]
            rss[name] = await measure_rss(proc, url, headers, args.websockets, dial)

    table = render(results, ws_results, rss, args)
    print(table)
    if args.write:
        (ROOT / "benchmarks/results").mkdir(exist_ok=True)
        (ROOT / "benchmarks/results/proxy.md").write_text(table)
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def controller_api(controller: Controller) -> AsyncIterator[str]:
    """The controller's internal route API, served in this process; yields its URL."""
    ctl_app = Starlette(
        routes=[
            Route("/internal/routes/{sid}", controller.route),
            Route("/internal/activity", controller.activity, methods=["POST"]),
        ]
    )
    ctl_sock = bind("127.0.0.1", 0)
    # The real controller's keep-alive (longer than the proxy's client keeps a connection):
    # uvicorn's default 5 s let a route lookup meet a connection just being closed (a 503).
    config = uvicorn.Config(
        ctl_app, log_level="warning", lifespan="off", timeout_keep_alive=KEEP_ALIVE_SECONDS
    )
    ctl = Server(config)
    ctl_task = asyncio.create_task(ctl.serve(sockets=[ctl_sock]))
    try:
        yield f"http://127.0.0.1:{ctl_sock.getsockname()[1]}"
    finally:
        ctl.should_exit = True
        await ctl_task


def proxy_env(controller_url: str, root: Path = ROOT, **extra: str) -> dict[str, str]:
    """Settings for ``python -m proxy``; ``root`` is the tree whose proxy code runs."""
    return dict(
        os.environ,
        PYTHONPATH=str(root),
        SANDBOX_TOKEN_SECRET=SECRET,
        SANDBOX_API_TOKEN=API_TOKEN,
        SANDBOX_CONTROLLER_URL=controller_url,
        SANDBOX_LOG_LEVEL="warning",
        **extra,
    )


def spawn_proxy(
    env: dict[str, str], wrapper: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str]:
    """``python -m proxy`` from the tree on the env's PYTHONPATH (``-m`` puts the working
    directory first on sys.path, so it must be that tree too)."""
    command = [*wrapper, sys.executable, "-m", "proxy", "--port", "0"]
    return spawn_listening(command, env, cwd=Path(env["PYTHONPATH"]))


@contextlib.asynccontextmanager
async def proxy_pair(
    controller: Controller, baseline: Path | None = None
) -> AsyncIterator[tuple[dict[str, tuple[subprocess.Popen[str], str]], str]]:
    """This proxy in path and subdomain mode (and the baseline tree's in path mode), with
    the controller's route API in this process. Yields {name: (process, address)} and the
    controller's URL."""
    async with controller_api(controller) as url:
        env = proxy_env(url)
        with processes() as procs:
            started: dict[str, tuple[subprocess.Popen[str], str]] = {}
            if baseline is not None:
                started[BASELINE] = spawn_proxy(proxy_env(url, baseline))
            started["this proxy"] = spawn_proxy(env)
            started[SUBDOMAIN] = spawn_proxy(dict(env, SANDBOX_PROXY_SESSION_DOMAIN=DOMAIN))
            procs += [proc for proc, _ in started.values()]
            yield started, url


async def measure_rss(
    proc: subprocess.Popen[str], url: str, headers: dict[str, str], count: int, dial: str | None
) -> tuple[float, float]:
    """VmRSS idle, then with ``count`` WebSockets open through the proxy (each used once)."""
    idle = rss_mib(proc.pid)
    conns = await open_many(url, headers, count, dial)
    await asyncio.sleep(1)
    loaded = rss_mib(proc.pid)
    for ws in conns:
        await ws.close()  # type: ignore[attr-defined]
    return idle, loaded


async def only_rss(count: int) -> None:
    token = issue_token(SECRET.encode(), SESSION, time.time() + 86400)
    auth = {"X-Sandbox-Token": token}
    with processes() as procs:
        ws_proc, ws_up = spawn_listening([sys.executable, "-c", WS_ECHO])
        procs.append(ws_proc)
        async with proxy_pair(Controller(ws_up)) as (ours, _):
            (ours_proc, ours_addr), (sub_proc, sub_addr) = ours["this proxy"], ours[SUBDOMAIN]
            sub_host = f"{SESSION}.{DOMAIN}:{sub_addr.rpartition(':')[2]}"
            for name, proc, url, dial in (
                ("this proxy", ours_proc, f"ws://{ours_addr}/s/{SESSION}/ws", None),
                (SUBDOMAIN, sub_proc, f"ws://{sub_host}/ws", sub_addr),
            ):
                idle, loaded = await measure_rss(proc, url, auth, count, dial)
                print(
                    f"RSS of {name}: {idle:.1f} MiB idle, {loaded:.1f} MiB with {count} "
                    f"open WebSockets ({(loaded - idle) * 1024 / count:.1f} KiB each).",
                    flush=True,
                )


T = TypeVar("T")


def _after_ours(targets: dict[str, T], baseline: T) -> dict[str, T]:
    """``targets`` with the baseline proxy placed right after this proxy."""
    out: dict[str, T] = {}
    for name, target in targets.items():
        out[name] = target
        if name == "this proxy":
            out[BASELINE] = baseline
    return out


def get_n(address: str, request: bytes, n: int) -> None:
    """``n`` requests one after another on one keep-alive connection (blocking: a thread)."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port))) as sock:
        for _ in range(n):
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            m = re.search(rb"(?i)content-length: (\d+)", head)
            assert m, head
            while len(body) < int(m.group(1)):
                body += sock.recv(65536)


async def instructions(n: int, baseline: Path | None) -> None:
    """Instructions the proxy executes per forwarded request, counted by callgrind: unlike
    requests/s on a shared machine, this does not move with the neighbours' load.

    Each proxy runs under ``valgrind --tool=callgrind`` with instrumentation off; after a
    warm-up (route cached, upstream connection pooled) it is switched on for ``n``
    sequential keep-alive requests, so start-up and shutdown are not counted. What the
    process does by the clock rather than per request (uvicorn's 0.1 s tick, the route
    cache's 5 s refresh) would count more the slower valgrind runs, that is the busier
    the machine; so an idle window is counted too, and its rate per second is taken off
    the request window's count ("net"; "raw" is without that correction)."""
    token = issue_token(SECRET.encode(), SESSION, time.time() + 86400)
    tmp = Path(tempfile.mkdtemp(prefix="proxy-instr-"))
    with processes() as procs:
        up_port = free_port()
        (tmp / "up.conf").write_text(NGINX_UPSTREAM.format(d=tmp, port=up_port))
        procs.append(
            subprocess.Popen(
                ["nginx", "-p", str(tmp), "-c", str(tmp / "up.conf"), "-g", "daemon off;"]
            )
        )
        wait_port(up_port)
        trees = {"this proxy": ROOT, **({BASELINE: baseline} if baseline else {})}
        async with controller_api(Controller(f"127.0.0.1:{up_port}")) as url:
            for name, root in trees.items():
                for mode, extra in (
                    ("path", {}),
                    ("subdomain", {"SANDBOX_PROXY_SESSION_DOMAIN": DOMAIN}),
                ):
                    # Flushes are per interval, not per request: keep them out of the count.
                    env = proxy_env(url, root, SANDBOX_ACTIVITY_FLUSH_INTERVAL="3600", **extra)
                    out = tmp / f"callgrind.{len(procs)}"
                    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no")
                    proc, address = spawn_proxy(env, (*wrapper, f"--callgrind-out-file={out}"))
                    procs.append(proc)
                    path, host = (
                        (f"/s/{SESSION}/healthz", address)
                        if mode == "path"
                        else ("/healthz", f"{SESSION}.{DOMAIN}:{address.rpartition(':')[2]}")
                    )
                    request = (
                        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Sandbox-Token: {token}\r\n\r\n"
                    ).encode()
                    await asyncio.to_thread(get_n, address, request, 200)  # warm-up
                    control = ["callgrind_control", str(proc.pid)]
                    subprocess.run([*control, "-i", "on"], check=True, capture_output=True)
                    started = time.monotonic()
                    await asyncio.to_thread(get_n, address, request, n)
                    busy = _dumped(control, out, 1)
                    busy_seconds = time.monotonic() - started
                    started = time.monotonic()
                    await asyncio.sleep(5)
                    idle = _dumped(control, out, 2) / (time.monotonic() - started)
                    subprocess.run([*control, "-i", "off"], check=True, capture_output=True)
                    net = (busy - idle * busy_seconds) / n
                    print(
                        f"{name} ({mode} mode): {net:,.0f} instructions per request "
                        f"(raw {busy / n:,.0f}; {busy_seconds:.0f} s, idle {idle:,.0f}/s)",
                        flush=True,
                    )
                    proc.terminate()
                    proc.wait(30)
    shutil.rmtree(tmp, ignore_errors=True)


def _dumped(control: list[str], out: Path, number: int) -> int:
    """Instructions counted since the last dump: callgrind writes dump ``number`` now."""
    subprocess.run([*control, "-d"], check=True, capture_output=True)
    for line in Path(f"{out}.{number}").read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}.{number}")


def render(
    results: dict[str, list[tuple[float, float]]],
    ws_results: dict[str, list[tuple[float, float]]],
    rss: dict[str, tuple[float, float]],
    args: argparse.Namespace,
) -> str:
    med = {
        k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
        for k, v in results.items()
    }
    wsm = {
        k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v))
        for k, v in ws_results.items()
    }
    chp_rps = med["configurable-http-proxy"][0]
    lines = [
        "| target | requests/s (median) | vs CHP | p99 ms (median) "
        "| WS RTT p50 ms | WS RTT p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in med:
        rps, p99 = med[name]
        lines.append(
            f"| {name} | {rps:,.0f} | {rps / chp_rps:.2f}x | {p99:.2f} | "
            f"{wsm[name][0]:.3f} | {wsm[name][1]:.3f} |"
        )
    rounds = {k: ", ".join(f"{r:,.0f}" for r, _ in v) for k, v in results.items()}
    notes = [""]
    for name, (idle, busy) in rss.items():
        notes.append(
            f"RSS of {name}: {idle:.1f} MiB idle, {busy:.1f} MiB with "
            f"{args.websockets} open WebSockets."
        )
    notes += [
        "",
        "Per-round requests/s: " + "; ".join(f"{k}: {v}" for k, v in rounds.items()),
        "",
        f"wrk -t2 -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds; "
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"load average at the end {os.getloadavg()[0]:.2f}.",
    ]
    return "\n".join(lines + notes) + "\n"


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
