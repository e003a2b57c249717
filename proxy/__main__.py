"""``python -m proxy [--host H] [--port P]``: the proxy alone, settings from SANDBOX_*.

Prints ``listening <host>:<port>`` once bound (like devsandbox), so a parent that passed
``--port 0`` learns the port without racing for a free one. The CLI's
``sandbox-controller proxy`` is the supported entry; this one serves tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio

from sandbox_controller.config import load_settings
from sandbox_controller.serving import configure_logging, serve, stop_on_signals, tune_gc

from .process import ProxyProcess


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
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        process = ProxyProcess(settings)
        host = settings.proxy_host
        await serve(process, stop, lambda: print(f"listening {host}:{process.port}", flush=True))

    tune_gc()  # a process of its own, so the collector may be tuned for serving
    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
