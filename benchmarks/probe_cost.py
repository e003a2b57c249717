"""What direct readiness probing costs the controller: CPU per second of waiting, by
the number of pods probed and the interval (SANDBOX_KUBE_READINESS_INTERVAL).

    python benchmarks/probe_cost.py [--pods 16,64] [--intervals 0.1,0.05,0.025]
                                    [--seconds 5]

The controller's own prober (kube_readiness.DirectReadiness) probes N pods that never
turn ready, for --seconds, in this process; the figure is this process's CPU time
(user + system) over the wall time, in % of one core, and the probes it sent. Two
kinds of unready pod: ``refused`` (the container runs but its app does not listen
yet: each probe is a refused connect, the common case while a sandbox starts) and
``503`` (the app listens but answers 503: a whole HTTP exchange each time, on a kept
connection; the pods are another process, so their CPU is not counted).

Writes a Markdown table to stdout and to benchmarks/results/probe_cost.md.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.common import ROOT, stop
from sandbox_controller.backends import kube_readiness
from sandbox_controller.backends.kube_readiness import DirectReadiness, ProbeTarget
from sandbox_controller.clock import SystemClock

HOSTS = "127.3.0.{}"  # loopback addresses of their own: one per simulated pod
ANSWER_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n"
    b"content-type: text/plain\r\n\r\nnot ready"
)


def free_pod_port(count: int) -> int:
    """A port free on the first ``count`` pod addresses."""
    while True:
        with socket.socket() as probe:
            probe.bind((HOSTS.format(1), 0))
            port = int(probe.getsockname()[1])
        try:
            for i in range(1, count + 1):
                with socket.socket() as s:
                    s.bind((HOSTS.format(i), port))
        except OSError:
            continue
        return port


async def serve_503(count: int, port: int) -> None:
    """The pods of the ``503`` kind (run in a child process): each address answers
    every request 503, keeping the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(ANSWER_503)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    for i in range(1, count + 1):
        await asyncio.start_server(answer, HOSTS.format(i), port)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def measure(count: int, port: int, interval: float, seconds: float) -> tuple[float, float]:
    """(% of one core, probes per second) for ``count`` pods probed every ``interval``."""
    sent = 0
    # Counted where the prober sends: its HTTP probes, and its bare connects (where
    # this tree has them: a pod not listening yet costs one of those, not a probe).
    real = {
        name: getattr(kube_readiness, name)
        for name in ("probe", "accepts")
        if hasattr(kube_readiness, name)
    }

    def counting(call: Callable[..., Awaitable[bool]]) -> Callable[..., Awaitable[bool]]:
        async def counted(*args: object, **kwargs: object) -> bool:
            nonlocal sent
            sent += 1
            return await call(*args, **kwargs)

        return counted

    for name, call in real.items():
        setattr(kube_readiness, name, counting(call))
    target = ProbeTarget("/healthz", port, {}, 1.0, 60.0)
    prober = DirectReadiness(
        target,
        clock=SystemClock(),
        answered=lambda name: None,
        unconfirmed=lambda name: None,
        interval=interval,
    )
    try:
        for i in range(1, count + 1):
            prober.unready(f"pod-{i}", HOSTS.format(i))
        prober.set_waiting(1)
        await asyncio.sleep(0.5)  # connections made, the first probes spread
        cpu, wall, before = time.process_time(), time.monotonic(), sent
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        return 100 * cpu / wall, (sent - before) / wall
    finally:
        await prober.stop()
        for name, call in real.items():
            setattr(kube_readiness, name, call)


async def run_all(args: argparse.Namespace) -> list[tuple[str, int, float, float, float]]:
    pods = [int(v) for v in args.pods.split(",")]
    intervals = [float(v) for v in args.intervals.split(",")]
    rows = []
    # Idle: what this process costs doing nothing, to subtract by eye.
    idle_cpu, idle_wall = time.process_time(), time.monotonic()
    await asyncio.sleep(1.0)
    idle = 100 * (time.process_time() - idle_cpu) / (time.monotonic() - idle_wall)
    rows.append(("idle", 0, 0.0, idle, 0.0))
    for kind in ("refused", "503"):
        for count in pods:
            port = free_pod_port(count)
            held: list[socket.socket] = []
            server = None
            if kind == "refused":
                for i in range(1, count + 1):  # bound, never listening: refused
                    s = socket.socket()
                    s.bind((HOSTS.format(i), port))
                    held.append(s)
            else:
                server = subprocess.Popen(
                    [sys.executable, __file__, "--serve-503", str(count), str(port)],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
                assert server.stdout is not None
                server.stdout.readline()
            try:
                for interval in intervals:
                    cpu, rate = await measure(count, port, interval, args.seconds)
                    rows.append((kind, count, interval, cpu, rate))
            finally:
                for s in held:
                    s.close()
                if server is not None:
                    stop(server)
    return rows


def render(args: argparse.Namespace, rows: list[tuple[str, int, float, float, float]]) -> str:
    lines = [
        f"Direct readiness probing, this process's CPU over {args.seconds:g} s per row "
        "(% of one core), by kind of unready pod, pods probed and interval.",
        "",
        "| pods | kind | interval | probes/s | CPU, % of a core | CPU per probe, µs |",
        "|---|---|---|---|---|---|",
    ]
    idle = rows[0][3]
    for kind, count, interval, cpu, rate in rows[1:]:
        per_probe = (cpu - idle) / 100 / rate * 1e6 if rate else 0.0
        lines.append(
            f"| {count} | {kind} | {interval * 1000:g} ms | {rate:.0f} | {cpu:.1f} | "
            f"{per_probe:.0f} |"
        )
    lines += ["", f"Idle (no probes): {idle:.1f}% of a core."]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-503":
        asyncio.run(serve_503(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", default="16,64")
    parser.add_argument("--intervals", default="0.1,0.05,0.025")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    table = render(args, asyncio.run(run_all(args)))
    print(table)
    out = ROOT / "benchmarks" / "results" / "probe_cost.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
