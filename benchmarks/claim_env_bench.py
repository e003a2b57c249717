"""Warm claims with and without a 1 KiB env, both through the claim hook to devsandbox.

    python benchmarks/claim_env_bench.py [--claims 150] [--env-bytes 1024]

kubesim runs with workloads (a devsandbox at each pod's address, reading its claim
secret from the pod's env) and the controller (`sandbox-controller serve`, SQLite,
SANDBOX_HOOKS on) in processes of their own. The warm pool holds every claim of the
run with maxTotalJobs equal to it, so no refill runs while measuring. Claims go one at
a time, plain and with env alternating (so the machine's noise falls on both alike),
each a new user and thread; each is timed at the client from request to ready answer.
Prints the medians, p90s and the difference of the medians; the target (issue 12) is
a difference within 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import TOKEN, TOKEN_SECRET, Kubesim, free_port, stop  # noqa: E402


def start_controller(
    tmp: Path, kubeconfig: str, pool: int, port: int, hooks: bool
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
        "SANDBOX_BACKEND": "kubernetes",
        "SANDBOX_KUBECONFIG": kubeconfig,
        "SANDBOX_NAMESPACE": "default",
        "SANDBOX_PREWARM_POOL_SIZE": str(pool),
        "SANDBOX_MAX_TOTAL_JOBS": str(pool),
        "SANDBOX_MAX_SESSIONS_PER_USER": "5",
        "SANDBOX_MAX_CONCURRENT_CREATES": "20",
        "SANDBOX_KUBE_QPS": "5000",
        "SANDBOX_KUBE_BURST": "5000",
        "SANDBOX_API_TOKEN": TOKEN,
        "SANDBOX_TOKEN_SECRET": TOKEN_SECRET,
        "SANDBOX_HOOKS": "true" if hooks else "false",
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_LOG_LEVEL": "warning",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "sandbox_controller.cli", "serve"], env=env, cwd=ROOT
    )


async def wait_idle(client: httpx.AsyncClient, idle: int, timeout: float) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if (await client.get("/pool")).json()["pods"]["idle"] >= idle:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the pool never reached {idle} idle pods")


def env_of(size: int) -> dict[str, str]:
    """``size`` bytes of names and values, in 16 variables."""
    per = size // 16
    return {f"VAR_{i:02d}": "v" * (per - 6) for i in range(16)}


async def measure(base: str, claims: int, env: dict[str, str] | None) -> dict[str, list[float]]:
    """Alternately plain and with ``env`` (None: plain only)."""
    times: dict[str, list[float]] = {"plain": [], "env": []}
    outcomes: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        for i in range(claims):
            kind = "plain" if i % 2 == 0 or env is None else "env"
            body: dict[str, Any] = {"user_id": f"u{i}", "thread_id": f"t{i}"}
            if kind == "env":
                body["env"] = env
            started = time.perf_counter()
            response = await client.post("/sessions", json=body)
            elapsed = time.perf_counter() - started
            state = response.json().get("state") if response.status_code == 201 else None
            if state != "ready":
                raise RuntimeError(f"claim {i}: {response.status_code} {response.text[:200]}")
            times[kind].append(elapsed * 1000)
        metrics = (await client.get("/metrics")).text
    for line in metrics.splitlines():
        if line.startswith(
            ("sandbox_session_requests_total{", "sandbox_claim_hook_failures_total")
        ):
            name, value = line.rsplit(" ", 1)
            outcomes[name] = int(float(value))
    print(json.dumps(outcomes))
    return times


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_run(claims: int, env: dict[str, str] | None) -> dict[str, list[float]]:
    """A fresh kubesim and controller; the hooks on unless ``env`` is None."""
    pool = claims + 5
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        sim = Kubesim(
            tmp,
            nodes=4,
            node_cpu="1000",
            node_memory="4000Gi",
            startup_delay=0.01,
            workload=True,
        )
        port = free_port()
        controller = start_controller(tmp, sim.kubeconfig, pool, port, hooks=env is not None)
        base = f"http://127.0.0.1:{port}"
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
                await wait_idle(client, pool, timeout=300)
            await asyncio.sleep(1.0)  # let the last pod rows and labels settle
            return await measure(base, claims, env)
        finally:
            stop(controller)
            sim.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = env_of(args.env_bytes)
    env_size = sum(len(k) + len(v) for k, v in env.items())
    times = await one_run(args.claims, env)
    plain, with_env = times["plain"], times["env"]
    result = {
        "claims": args.claims,
        "env_bytes": env_size,
        "plain_p50_ms": statistics.median(plain),
        "env_p50_ms": statistics.median(with_env),
        "plain_p90_ms": p(plain, 0.9),
        "env_p90_ms": p(with_env, 0.9),
    }
    result["p50_difference_ms"] = result["env_p50_ms"] - result["plain_p50_ms"]
    if args.baseline:
        # For scale: the same plain claims with no hook at all (SANDBOX_HOOKS=false).
        no_hooks = (await one_run(args.claims // 2, None))["plain"]
        result["no_hooks_p50_ms"] = statistics.median(no_hooks)
        result["no_hooks_p90_ms"] = p(no_hooks, 0.9)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--claims", type=int, default=150, help="claims in all, half with env")
    parser.add_argument("--env-bytes", type=int, default=1024)
    parser.add_argument(
        "--baseline", action="store_true", help="also plain claims with SANDBOX_HOOKS=false"
    )
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print("| claims | env | p50 ms | p90 ms |")
    print("|---|---|---|---|")
    print(f"| {r['claims'] // 2} | none | {r['plain_p50_ms']:.2f} | {r['plain_p90_ms']:.2f} |")
    print(
        f"| {r['claims'] // 2} | {r['env_bytes']} B | {r['env_p50_ms']:.2f} | "
        f"{r['env_p90_ms']:.2f} |"
    )
    if "no_hooks_p50_ms" in r:
        print(
            f"| {r['claims'] // 2} | none, hooks off | {r['no_hooks_p50_ms']:.2f} | "
            f"{r['no_hooks_p90_ms']:.2f} |"
        )
    print(f"p50 difference: {r['p50_difference_ms']:+.2f} ms (target: within 5 ms)")


if __name__ == "__main__":
    main()
