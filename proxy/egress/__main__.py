"""``python -m proxy.egress [--host H] [--port P]``: the egress proxy alone, settings from
SANDBOX_*. Prints ``listening <host>:<port>`` once bound, like ``python -m proxy``. The
CLI's ``sandbox-controller egress-proxy`` is the supported entry; this one serves tests
and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import logging

from sandbox_controller.config import load_settings
from sandbox_controller.serving import configure_logging, serve, stop_on_signals, tune_gc

from .process import EgressProxyProcess


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.egress")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.host is not None:
        overrides["egress_proxy_host"] = args.host
    if args.port is not None:
        overrides["egress_proxy_port"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    # One line per controller call is noise (the connection's own line says what matters).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        process = EgressProxyProcess(settings)
        host = settings.egress_proxy_host
        await serve(process, stop, lambda: print(f"listening {host}:{process.port}", flush=True))

    tune_gc()
    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()
