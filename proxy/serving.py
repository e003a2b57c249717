"""``python -m proxy`` and ``python -m proxy.egress``: one entry for both proxies, each a
process of its own with settings from SANDBOX_* and ``--host``/``--port`` on top.

Prints ``listening <host>:<port>`` once bound (like devsandbox), so a parent that passed
``--port 0`` learns the port without racing for a free one. The CLI's
``sandbox-controller proxy`` and ``egress-proxy`` are the supported entries; these serve
tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sandbox_controller.config import Settings, load_settings
from sandbox_controller.serving import (
    Process,
    configure_logging,
    serve,
    stop_on_signals,
    tune_gc,
)


class Bound(Process, Protocol):
    @property
    def port(self) -> int: ...


def main(
    prog: str,
    argv: list[str] | None,
    *,
    settings_prefix: str,
    make: Callable[[Settings], Bound],
    quiet: Sequence[str] = (),
) -> None:
    """``settings_prefix``: whose host and port ``--host``/``--port`` set (``proxy`` or
    ``egress_proxy``); ``quiet``: loggers held at WARNING."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides[f"{settings_prefix}_host"] = args.host
    if args.port is not None:
        overrides[f"{settings_prefix}_port"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    host = getattr(settings, f"{settings_prefix}_host")

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        process = make(settings)
        await serve(process, stop, lambda: print(f"listening {host}:{process.port}", flush=True))

    tune_gc()  # a process of its own, so the collector may be tuned for serving
    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
