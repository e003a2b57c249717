"""``sandbox-controller``: dev, serve, proxy, migrate, plan, trace, simulate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
from typing import TYPE_CHECKING, Any

import uvloop

from .config import ConfigError, Settings, is_loopback, load_settings

if TYPE_CHECKING:
    from .serving import Process

log = logging.getLogger("sandbox_controller")


def _setup_logging(settings: Settings) -> None:
    from .serving import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # One line per request to a sandbox's /healthz is noise, not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _settings(**overrides: Any) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


async def _migrate(settings: Settings) -> None:
    from .store import Store

    store = Store.open(settings.database_url)
    try:
        await store.migrate()
    finally:
        await store.close()


async def _main(command: str, settings: Settings) -> None:
    if command == "migrate":
        await _migrate(settings)
        return
    # Imported here: `migrate` and `plan` need neither the app nor the proxy.
    from .process import ControllerProcess, DevProcess
    from .serving import serve, stop_on_signals, tune_gc

    tune_gc()
    process: Process
    if command == "dev":
        process = DevProcess(settings)
    elif command == "serve":
        process = ControllerProcess(settings)
    else:
        from proxy import ProxyProcess

        process = ProxyProcess(settings)
    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve(process, stop)


def _require_api_token(settings: Settings) -> None:
    if settings.api_token is None and not is_loopback(settings.host):
        raise ConfigError(
            f"SANDBOX_API_TOKEN: required when the API listens on {settings.host} "
            "(not loopback only)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox-controller", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="controller + proxy + local sandboxes + SQLite, one process")
    dev.add_argument("--host")
    dev.add_argument("--port", type=int)
    dev.add_argument("--proxy-port", type=int)
    sub.add_parser("serve", help="the controller alone (what the Helm chart runs)")
    sub.add_parser("proxy", help="the proxy alone (what the Helm chart runs, N replicas)")
    sub.add_parser("migrate", help="apply database migrations and exit")
    sub.add_parser(
        "plan", help="capacity arithmetic: pods, CPU and memory for a peak", add_help=False
    )
    sub.add_parser(
        "trace", help="export a trace of real sessions, or synthesize one", add_help=False
    )
    sub.add_parser("simulate", help="replay a trace through the real scheduler", add_help=False)
    args, rest = parser.parse_known_args(argv)

    if args.command == "plan":
        from .plan import main as plan_main

        return plan_main(rest)
    if args.command in ("trace", "simulate"):
        # Imported here: the controller itself never loads the simulator.
        from .sim.cli import simulate_main, trace_main

        return (trace_main if args.command == "trace" else simulate_main)(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "dev":
            settings = _settings(host=args.host, port=args.port, proxy_port=args.proxy_port)
            if settings.api_token is None:
                settings = settings.model_copy(update={"api_token": secrets.token_urlsafe(24)})
            if settings.token_secret is None:
                settings = settings.model_copy(update={"token_secret": secrets.token_urlsafe(32)})
        else:
            settings = _settings()
        if args.command == "serve":
            _require_api_token(settings)
        if args.command == "proxy" and not settings.token_secret:
            raise ConfigError("SANDBOX_TOKEN_SECRET: required by the proxy to verify tokens")
    except ConfigError as exc:
        print(f"sandbox-controller: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    try:
        uvloop.run(_main(args.command, settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        # A taken port or an unreachable address: say so in one line, not a traceback.
        print(f"sandbox-controller: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
