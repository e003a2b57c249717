"""What keeping the sandboxes' PodDisruptionBudget costs the claim path (issue 25).

    python benchmarks/budget_bench.py [--pool 300] [--claims 600] [--concurrency 20]
                                      [--rounds 2]

kubesim and the controller (``sandbox-controller serve``, SANDBOX_BACKEND=kubernetes) as
separate processes, as kube_bench.py runs them. Each round runs the same load twice,
without a budget and with one (SANDBOX_KUBE_DISRUPTION_BUDGET, the budget created in
kubesim first), alternating which goes first: a warm pool of --pool pods, then
--claims POST /sessions from --concurrency connections (wrk). Reports the claim
latency (p50, p99), the Kubernetes API calls per session, and the budget's PATCH
calls: a burst of leases must cost a few writes, not one per session.

Writes a Markdown table to stdout (for benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.common import TOKEN, Kubesim, free_port, run_wrk, stop, wait_leader
from benchmarks.kube_bench import api_calls, start_controller, wait_idle

BUDGET = "sandboxes"


def create_budget(sim: Kubesim) -> None:
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": BUDGET},
        "spec": {
            "minAvailable": 0,
            "selector": {"matchLabels": {"agent-sandbox/state": "assigned"}},
        },
    }
    url = f"{sim.url}/apis/policy/v1/namespaces/default/poddisruptionbudgets"
    httpx.post(url, json=body, timeout=30).raise_for_status()


async def one_run(args: argparse.Namespace, tmp: Path, budget: bool) -> dict[str, Any]:
    max_total = args.pool + args.claims + args.concurrency
    sim = Kubesim(
        tmp, nodes=max_total // 100 + 2, node_cpu="128", node_memory="512Gi", startup_delay=0.05
    )
    if budget:
        create_budget(sim)
        os.environ["SANDBOX_KUBE_DISRUPTION_BUDGET"] = BUDGET
    else:
        os.environ.pop("SANDBOX_KUBE_DISRUPTION_BUDGET", None)
    port = free_port()
    database = f"sqlite+aiosqlite:///{tmp}/budget-{int(budget)}.db"
    ctl = start_controller(
        sim.kubeconfig,
        database,
        port,
        pool=args.pool,
        max_total=max_total,
        qps=200.0,
        burst=400,
        creates=20,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
        ) as client:
            await wait_leader(client)
            await wait_idle(client, args.pool, timeout=900)
            before = api_calls(sim.stats())
            base = str(client.base_url).rstrip("/")
            loaded = run_wrk(
                base, "/sessions", args.concurrency, 300, "loaded", -(-args.claims // 2)
            )
            await wait_idle(client, args.pool, timeout=900)
            after = api_calls(sim.stats())
    finally:
        stop(ctl)
        sim.stop()
        os.environ.pop("SANDBOX_KUBE_DISRUPTION_BUDGET", None)
    calls = after - before
    sessions = max(loaded["requests"], 1)
    return {
        "p50_ms": loaded["p50_us"] / 1000,
        "p99_ms": loaded["p99_us"] / 1000,
        "errors": loaded["non2xx"] + loaded["socket_errors"],
        "calls_per_session": sum(calls.values()) / sessions,
        "budget_patches": sum(n for k, n in calls.items() if "poddisruptionbudgets" in k),
        "sessions": sessions,
    }


async def run(args: argparse.Namespace) -> str:
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for budget in (False, True) if i % 2 == 0 else (True, False):
                sub = Path(tmp) / f"r{i}-{int(budget)}"
                sub.mkdir()
                results[budget].append(await one_run(args, sub, budget))

    def median(budget: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[budget])

    lines = [
        f"{args.claims} claims from {args.concurrency} connections on a {args.pool}-pod warm "
        f"pool, {args.rounds} rounds each, medians:",
        "",
        "| | no budget | budget kept | ratio |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("p50_ms", "claim p50 (ms)"),
        ("p99_ms", "claim p99 (ms)"),
        ("calls_per_session", "API calls per session"),
    ):
        off, on = median(False, key), median(True, key)
        lines.append(f"| {label} | {off:.2f} | {on:.2f} | {on / off if off else 0:.2f} |")
    lines.append(f"| budget PATCH calls | 0 | {median(True, 'budget_patches'):.0f} | |")
    lines.append(f"| errors | {median(False, 'errors'):.0f} | {median(True, 'errors'):.0f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--claims", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    print(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
