"""``python -m sandbox_controller.kubesim --port N --kubeconfig PATH``: run kubesim."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
from collections.abc import Callable

from .faults import Faults
from .sim import KubeSim, default_kubeconfig_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubesim", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--kubeconfig", default=default_kubeconfig_path(), help="written at start")
    p.add_argument("--namespace", default="default")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--node-cpu", default="4")
    p.add_argument("--node-memory", default="16Gi")
    p.add_argument("--startup-delay", type=float, default=0.5, help="seconds to Ready")
    p.add_argument("--termination-delay", type=float, default=0.1)
    p.add_argument("--workload", action="store_true", help="serve devsandbox at each pod IP")
    p.add_argument(
        "--app-delay",
        default="0",
        help="seconds from a container running to its app answering (readiness probes);"
        " LOW:HIGH draws it uniformly per pod",
    )
    p.add_argument("--token", default="kubesim-token")
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME=TOKEN",
        help="another bearer token, recorded in the call log as NAME (repeatable)",
    )
    p.add_argument("--history", type=int, default=10_000, help="watch history kept (events)")
    p.add_argument("--bookmark-interval", type=float, default=5.0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--error-codes", default="500,429")
    p.add_argument("--retry-after", type=int, default=1)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--cut-watches-every", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-level", default="warning")
    return p.parse_args(argv)


def parse_users(specs: list[str]) -> dict[str, str]:
    """``NAME=TOKEN`` options as token -> name."""
    users = {}
    for spec in specs:
        name, sep, token = spec.partition("=")
        if not sep or not name or not token:
            raise SystemExit(f"kubesim: --user wants NAME=TOKEN, got {spec!r}")
        users[token] = name
    return users


def parse_app_delay(spec: str) -> float | Callable[[], float]:
    """``S`` seconds, or ``LOW:HIGH``: a draw per pod, uniform in between."""
    low, sep, high = spec.partition(":")
    if not sep:
        return float(spec)
    a, b = float(low), float(high)
    rng = random.Random()
    return lambda: rng.uniform(a, b)


async def serve(args: argparse.Namespace) -> None:
    faults = Faults(
        error_rate=args.error_rate,
        error_codes=tuple(int(c) for c in args.error_codes.split(",") if c),
        retry_after=args.retry_after,
        latency=args.latency,
        cut_watches_every=args.cut_watches_every,
    )
    sim = KubeSim(
        host=args.host,
        port=args.port,
        namespace=args.namespace,
        nodes=args.nodes,
        node_cpu=args.node_cpu,
        node_memory=args.node_memory,
        startup_delay=args.startup_delay,
        termination_delay=args.termination_delay,
        workload=args.workload,
        app_delay=parse_app_delay(args.app_delay),
        faults=faults,
        token=args.token or None,
        users=parse_users(args.user),
        history_limit=args.history,
        bookmark_interval=args.bookmark_interval,
        kubeconfig=args.kubeconfig,
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        # One line a parent process can parse to learn the port and kubeconfig.
        print(json.dumps({"url": sim.url, "kubeconfig": str(sim.kubeconfig_path)}), flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
