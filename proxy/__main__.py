"""``python -m proxy [--host H] [--port P]``: the proxy alone, settings from SANDBOX_*.

Prints ``listening <host>:<port>`` once bound (like devsandbox), so a parent that passed
``--port 0`` learns the port without racing for a free one. The CLI's
``sandbox-controller proxy`` is the supported entry; this one serves tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal

from sandbox_controller.config import load_settings

from .server import serve_proxy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["proxy_host"] = args.host
    if args.port is not None:
        overrides["proxy_port"] = args.port
    settings = load_settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )

    async def run() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)
        await serve_proxy(
            settings,
            shutdown=shutdown,
            on_bound=lambda host, port: print(f"listening {host}:{port}", flush=True),
        )

    # A process of its own, so we may tune the collector: the forwarding path allocates
    # many short-lived objects, and fewer young collections cut the latency tail
    # (benchmarks/proxy.md); freezing moves start-up objects out of every full collection.
    gc.set_threshold(20_000, 50, 100)
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
