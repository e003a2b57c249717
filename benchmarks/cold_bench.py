"""Cold claims: how long after a new pod's app answers is it handed to the waiting
session? The kubelet's readiness probe runs every 2 s (the chart's and the built-in
template's period), so waiting for it costs up to 2 s; probing the pod directly while
a session waits (SANDBOX_KUBE_DIRECT_READINESS, on by default) should cost at most
100 ms at p95.

    python benchmarks/cold_bench.py [--claims 40] [--concurrency 4] [--app-delay 0.1:3.9]
                                    [--intervals 0.1,0.05]

Today's behaviour (SANDBOX_KUBE_DIRECT_READINESS=false: the kubelet's word alone) and
direct probing at each of --intervals (SANDBOX_KUBE_READINESS_INTERVAL; 50 ms is the
default) in one run, one after the other, each with its own kubesim and controller
(``sandbox-controller serve``, SANDBOX_BACKEND=kubernetes, SQLite) as separate
processes: kubesim with a workload (a devsandbox at each pod's address, so the claim
hook and the probes are real HTTP), its kubelet probing each pod as the template says,
and each pod's app answering a random time after its container starts (--app-delay,
uniform). No warm pool: every claim is cold. --claims POST /sessions, --concurrency at
a time, each waiting for its pod; a session is ended once it is ready, so capacity
never runs out.

The overhead of a claim is the moment its answer (201, ready) reached the client, less
the moment its pod's app first answered (kubesim records it; both are CLOCK_MONOTONIC,
one clock for every process on the machine). It includes the claim hook's round trip.
With direct probing it splits into *seen* (our first probe the app answered, less that
moment) and *hand-over* (the rest), which splits again at the claim hook's request
reaching the pod: *probe to claim* (the probe's answer back, the scheduler's round, the
claim call sent) and *claim to answer* (the hook's answer, the round that hands the
session over, its commit, the 201 to the client).

Writes a Markdown table to stdout and to benchmarks/results/cold.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.common import ROOT, TOKEN, TOKEN_SECRET, free_port, stop, wait_leader
from sandbox_controller.config import KubeOptions
from sandbox_controller.kubesim.probes import KUBE_PROBE_AGENT
from sandbox_controller.sandbox_contract import CLAIM_PATH, HEALTH_PATH

PERIOD = 2  # the built-in pod template's readinessProbe.periodSeconds
DEFAULT_INTERVAL = KubeOptions.readiness_interval  # SANDBOX_KUBE_READINESS_INTERVAL's


def start_kubesim(tmp: Path, app_delay: str) -> tuple[subprocess.Popen[str], str, str]:
    kubeconfig = str(tmp / "kubeconfig")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox_controller.kubesim",
            "--port",
            "0",
            "--kubeconfig",
            kubeconfig,
            "--nodes",
            "4",
            "--node-cpu",
            "64",
            "--node-memory",
            "256Gi",
            "--startup-delay",
            "0.2",
            "--workload",
            "--app-delay",
            app_delay,
            "--token",
            "",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    url = json.loads(proc.stdout.readline())["url"]  # printed once it listens
    return proc, url, kubeconfig


def start_controller(
    kubeconfig: str, tmp: Path, port: int, *, interval: float | None
) -> subprocess.Popen[bytes]:
    """``interval`` None: direct probing off."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/cold.db",
        "SANDBOX_BACKEND": "kubernetes",
        "SANDBOX_KUBECONFIG": kubeconfig,
        "SANDBOX_NAMESPACE": "default",
        "SANDBOX_PREWARM_POOL_SIZE": "0",
        "SANDBOX_MAX_TOTAL_JOBS": "200",
        "SANDBOX_MAX_SESSIONS_PER_USER": "5",
        "SANDBOX_KUBE_QPS": "200",
        "SANDBOX_KUBE_BURST": "400",
        "SANDBOX_KUBE_DIRECT_READINESS": "false" if interval is None else "true",
        "SANDBOX_KUBE_READINESS_INTERVAL": str(interval or 0.1),
        "SANDBOX_API_TOKEN": TOKEN,
        "SANDBOX_TOKEN_SECRET": TOKEN_SECRET,
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox_controller.cli", "serve"], env=env, cwd=ROOT
    )


async def claims(
    client: httpx.AsyncClient, count: int, concurrency: int
) -> list[tuple[str, float]]:
    """(pod, moment the ready answer arrived) of each cold claim."""
    done: list[tuple[str, float]] = []
    numbers = iter(range(count))

    async def worker() -> None:
        for i in numbers:
            response = await client.post(
                "/sessions",
                json={"user_id": f"cold-{i}", "thread_id": f"t{i}", "wait_seconds": 60},
            )
            arrived = time.monotonic()
            body = response.json()
            if response.status_code != 201 or body.get("state") != "ready":
                raise RuntimeError(f"claim {i}: {response.status_code} {response.text}")
            done.append((body["pod"], arrived))
            await client.delete(f"/sessions/{body['id']}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def one_mode(args: argparse.Namespace, interval: float | None) -> dict[str, list[float]]:
    """Per claim, seconds: ``overhead`` (the ready answer at the client, less the app's
    first answer) and, with direct probing, its two parts: ``seen`` (our first probe
    the app answered, less its first answer) and ``handover`` (the rest: the
    scheduler's round, the claim hook, the commit, the answer to the client)."""
    with tempfile.TemporaryDirectory(prefix="cold_bench_") as scratch:
        tmp = Path(scratch)
        sim, sim_url, kubeconfig = start_kubesim(tmp, args.app_delay)
        port = free_port()
        ctl = start_controller(kubeconfig, tmp, port, interval=interval)
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=120,
            ) as client:
                await wait_leader(client)
                answered_by = await claims(client, args.claims, args.concurrency)
                apps = (await client.get(f"{sim_url}/_kubesim/apps")).json()
        finally:
            stop(ctl)
            stop(sim)
    parts: dict[str, list[float]] = {
        "overhead": [],
        "seen": [],
        "handover": [],
        "to_claim": [],
        "after_claim": [],
    }
    for pod, arrived in answered_by:
        app = apps[pod]
        parts["overhead"].append(arrived - app["answered"])
        probes = [
            at
            for path, agent, at in app["requests"]
            if agent != KUBE_PROBE_AGENT and path == HEALTH_PATH
        ]
        if probes:
            parts["seen"].append(probes[0] - app["answered"])
            parts["handover"].append(arrived - probes[0])
            claimed = [at for path, _, at in app["requests"] if path == CLAIM_PATH]
            if claimed:
                parts["to_claim"].append(claimed[0] - probes[0])
                parts["after_claim"].append(arrived - claimed[0])
    return parts


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50": quantile(ms, 0.5), "p95": quantile(ms, 0.95), "max": max(ms)}


def cell(parts: dict[str, list[float]], part: str) -> str:
    if not parts[part]:
        return "-"
    r = summary(parts[part])
    return f"{r['p50']:.0f} / {r['p95']:.0f} / {r['max']:.0f}"


BASELINE = "kubelet only (today)"


def mode_name(interval: float) -> str:
    return f"direct probing every {interval * 1000:g} ms"


def render(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        f"Cold claims: {args.claims} per mode, {args.concurrency} at a time; kubelet "
        f"readiness probe every {PERIOD} s; each app answers {args.app_delay} s after its "
        "container starts (uniform). Overhead: the ready answer at the client, less the "
        "moment the pod's app first answered; seen: our first answered probe, less that "
        "moment; hand-over: the rest (round, claim hook, commit, answer), split at the "
        "claim hook's request reaching the pod. "
        "Each cell: p50 / p95 / max, ms.",
        "",
        "| mode | overhead | p95 vs today | seen | hand-over | probe to claim | claim to answer |",
        "|---|---|---|---|---|---|---|",
    ]
    old = summary(results[BASELINE]["overhead"])["p95"]
    for mode, parts in results.items():
        p95 = summary(parts["overhead"])["p95"]
        ratio = "" if mode == BASELINE else f"{old / p95:.1f}x lower"
        row = [mode, cell(parts, "overhead"), ratio]
        row += [cell(parts, part) for part in ("seen", "handover", "to_claim", "after_claim")]
        lines.append("| " + " | ".join(row) + " |")
    default = results.get(mode_name(DEFAULT_INTERVAL))
    if default is not None:
        p95 = summary(default["overhead"])["p95"]
        verdict = "met" if p95 <= 100 else "NOT met"
        lines += [
            "",
            f"Target p95 <= 100 ms at the default interval ({DEFAULT_INTERVAL * 1000:g} ms): "
            f"{verdict} ({p95:.0f} ms).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--app-delay", default="0.1:3.9", help="LOW:HIGH seconds")
    parser.add_argument("--intervals", default="0.1,0.05", help="direct probe intervals, s")
    args = parser.parse_args()
    intervals = [float(v) for v in args.intervals.split(",") if v]
    results = {BASELINE: asyncio.run(one_mode(args, None))}
    for interval in intervals:
        results[mode_name(interval)] = asyncio.run(one_mode(args, interval))
    table = render(args, results)
    print(table)
    out = ROOT / "benchmarks" / "results" / "cold.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")


if __name__ == "__main__":
    main()
