"""``sandbox-controller``: dev, serve, proxy, migrate, plan."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
from typing import Any

import uvloop

from .config import ConfigError, Settings, is_loopback, load_settings

log = logging.getLogger("sandbox_controller")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per request to a sandbox's /healthz is noise, not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _settings(**overrides: Any) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


async def _dev(settings: Settings) -> None:
    """Controller, proxy and local sandboxes in one process, stopped together."""
    from proxy import serve_proxy

    from .api import create_app
    from .serving import bind, make_server, serve_until, stop_on_signals

    stop = asyncio.Event()
    stop_on_signals(stop)
    api_sock = bind(settings.host, settings.port)
    api_port = api_sock.getsockname()[1]
    settings = settings.model_copy(update={"controller_url": f"http://127.0.0.1:{api_port}"})

    proxy_bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    proxy = asyncio.create_task(
        serve_proxy(settings, shutdown=stop, on_bound=lambda _, port: proxy_bound.set_result(port)),
        name="proxy",
    )
    # A proxy that fails to start (its port taken) never binds: raise its error rather
    # than wait for a port forever.
    starting: set[asyncio.Future[Any]] = {proxy, proxy_bound}
    await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
    if not proxy_bound.done():
        proxy.result()
        raise RuntimeError("the proxy stopped before it was listening")
    proxy_port = proxy_bound.result()
    if "SANDBOX_PROXY_PUBLIC_URL" not in os.environ:
        # Follow the port actually bound, unless the operator named a public URL.
        public = f"http://{settings.proxy_host}:{proxy_port}"
        settings = settings.model_copy(update={"proxy_public_url": public})
    server = make_server(
        create_app(settings, stop_sandboxes_on_exit=True), log_level=settings.log_level
    )
    controller = asyncio.create_task(serve_until(server, api_sock, stop), name="controller")
    print(
        f"agent-sandbox-controller dev\n"
        f"  controller API  http://{settings.host}:{api_port}\n"
        f"  proxy           http://{settings.proxy_host}:{proxy_port}\n"
        f"  API token       {settings.api_token}\n"
        f"  database        {settings.database_url}\n"
        f"Try: curl -H 'Authorization: Bearer {settings.api_token}' "
        f'-H \'content-type: application/json\' -d \'{{"user_id":"me","thread_id":"t1"}}\' '
        f"http://{settings.host}:{api_port}/sessions",
        flush=True,
    )
    await asyncio.gather(controller, proxy)


async def _serve(settings: Settings) -> None:
    from .api import create_app
    from .serving import bind, make_server, serve_until, stop_on_signals

    stop = asyncio.Event()
    stop_on_signals(stop)
    server = make_server(create_app(settings), log_level=settings.log_level)
    await serve_until(server, bind(settings.host, settings.port), stop)


async def _proxy(settings: Settings) -> None:
    from proxy import serve_proxy

    from .serving import stop_on_signals

    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve_proxy(settings, shutdown=stop)


async def _migrate(settings: Settings) -> None:
    from .store import Store

    store = Store.open(settings.database_url)
    try:
        await store.migrate()
    finally:
        await store.close()


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
    args, rest = parser.parse_known_args(argv)

    if args.command == "plan":
        from .plan import main as plan_main

        return plan_main(rest)
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
    _setup_logging(settings.log_level)
    runner = {"dev": _dev, "serve": _serve, "proxy": _proxy, "migrate": _migrate}[args.command]
    if args.command != "migrate":
        from .serving import tune_gc

        tune_gc()
    try:
        uvloop.run(runner(settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        # A taken port or an unreachable address: say so in one line, not a traceback.
        print(f"sandbox-controller: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
