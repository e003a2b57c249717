"""sandbox-controller: a warm pool of sandbox pods for AI-agent sessions.

Commands: dev, serve, proxy, egress-proxy, migrate, recover, plan, trace, simulate. Settings come from
SANDBOX_* environment variables (see the README); a few have flags too.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from .backends.base import BackendError
from .config import (
    ConfigError,
    Settings,
    check_secrets,
    is_loopback,
    load_settings,
    unknown_variables,
)

if TYPE_CHECKING:
    from .serving import Process

log = logging.getLogger("sandbox_controller")

# The commands that log (and warn) through the process's log handler.
_SERVERS = ("dev", "serve", "proxy", "egress-proxy", "migrate")


def _setup_logging(settings: Settings) -> None:
    from .serving import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # One line per request to a sandbox's /healthz is noise, not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic tells of every plugin it sets up at INFO: only a debugging operator cares.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    # One line per request to a sandbox's /healthz is noise, not news.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic tells of every plugin it sets up at INFO: only a debugging operator cares.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _settings(**overrides: Any) -> Settings:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


class BadRevision(Exception):
    """migrate --to named a revision this version does not know."""


async def _migrate(settings: Settings, to: str = "head") -> None:
    from .store import Store, UnknownRevision

    store = Store.open(settings.database_url)
    try:
        before = await store.revision()
        try:
            await store.migrate(to)
        except UnknownRevision as exc:
            raise BadRevision(str(exc)) from None
        after = await store.revision()
    finally:
        await store.close()
    if before != after:
        log.info("migrated the database from revision %s to %s", before, after)


class DatabaseUnusable(Exception):
    """SANDBOX_DATABASE_URL names no database this process can use; says which, and why."""


# Well within the 10 s a first-run user should wait to learn the database is wrong.
DATABASE_CHECK_TIMEOUT = 7.0


async def check_database(url: str) -> None:
    """The store opened as the process will open it, and one SELECT 1, before anything
    else starts: a wrong or unreachable database is one line (naming it, without its
    password) and an exit, not a traceback or a retry loop."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from .store import Store

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnusable("SANDBOX_DATABASE_URL is not a database URL") from None
    name = parsed.render_as_string(hide_password=True)

    def unusable(reason: str) -> DatabaseUnusable:
        # Drivers seldom echo a password, but this line goes to logs: never let one through.
        if parsed.password and len(str(parsed.password)) >= 4:
            reason = reason.replace(str(parsed.password), "***")
        return DatabaseUnusable(f"cannot use the database {name}: {reason}")

    try:
        store = Store.open(url)
    except Exception as exc:  # an unknown dialect, a missing driver, a bad path
        raise unusable(_first_line(exc)) from None
    try:
        async with asyncio.timeout(DATABASE_CHECK_TIMEOUT):
            await store.ping()
    except TimeoutError:
        raise unusable(f"no answer within {DATABASE_CHECK_TIMEOUT:g} s") from None
    except DBAPIError as exc:
        raise unusable(_first_line(exc.orig or exc)) from None
    except Exception as exc:  # refused connections and the like, as the driver words them
        raise unusable(_first_line(exc)) from None
    finally:
        await store.close()


def _first_line(exc: BaseException) -> str:
    words = str(exc).strip().splitlines()
    return words[0] if words else type(exc).__name__


async def _main(command: str, settings: Settings, migrate_to: str = "head") -> None:
    if command in ("dev", "serve", "migrate"):
        await check_database(settings.database_url)
    if command == "migrate":
        await _migrate(settings, migrate_to)
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
    elif command == "egress-proxy":
        from proxy.egress.process import EgressProxyProcess

        process = EgressProxyProcess(settings)
    else:
        from proxy import ProxyProcess

        process = ProxyProcess(settings)
    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve(process, stop)


def _require_api_token(settings: Settings) -> None:
    callers = settings.accepted_api_tokens or settings.token_review_users
    if not callers and not is_loopback(settings.host):
        raise ConfigError(
            f"SANDBOX_API_TOKEN: required when the API listens on {settings.host} "
            "(not loopback only); or SANDBOX_API_TOKENS"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sandbox-controller",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to run (COMMAND --help: more)"
    )
    dev = sub.add_parser(
        "dev",
        help="controller + proxy + local sandboxes + SQLite, one process",
        description="Controller, proxy and local sandbox processes in one process tree, "
        "for a laptop or a single VM. Keeps its API token and token secret in "
        "SANDBOX_STATE_DIR, so they survive a restart.",
    )
    dev.add_argument("--host", help="address of the controller API (SANDBOX_HOST; 127.0.0.1)")
    dev.add_argument("--port", type=int, help="controller API port (SANDBOX_PORT; 8080)")
    dev.add_argument(
        "--proxy-port", type=int, help="proxy port, 0 for any free one (SANDBOX_PROXY_PORT; 8081)"
    )
    sub.add_parser(
        "serve",
        help="the controller alone (what the Helm chart runs)",
        description="The controller alone. Needs SANDBOX_TOKEN_SECRET (it signs session "
        "tokens) and, unless it listens on loopback only, SANDBOX_API_TOKEN; give the "
        "proxies SANDBOX_PROXY_TOKEN (set it here too). Each a random value of at least 16 "
        "bytes.",
    )
    sub.add_parser(
        "proxy",
        help="the proxy alone (what the Helm chart runs, N replicas)",
        description="The proxy alone. Needs SANDBOX_CONTROLLER_URL and SANDBOX_PROXY_TOKEN "
        "(the same as the controller's); it gets the key that verifies session tokens from "
        "the controller, and holds no secret that signs them.",
    )
    sub.add_parser(
        "egress-proxy",
        help="the egress proxy alone: sandboxes' outbound HTTP(S), policy and secrets",
        description="The egress proxy (SANDBOX_EGRESS_PROXY_HOST/_PORT; 3128). Needs "
        "SANDBOX_CONTROLLER_URL and SANDBOX_PROXY_TOKEN: it asks the controller who each "
        "sandbox is and what it may reach. Serves /healthz and /metrics on the same port.",
    )
    migrate = sub.add_parser(
        "migrate",
        help="apply database migrations (or roll back) and exit",
        description="Apply the database migrations to SANDBOX_DATABASE_URL and exit. "
        "With --to REV, migrate up or down to that revision (a rollback before running "
        "an older version: stop the controllers first; see README, Backup and restore).",
    )
    migrate.add_argument(
        "--to", default="head", metavar="REV", help="target revision (e.g. 0002; default head)"
    )
    recover = sub.add_parser(
        "recover",
        help="show, or confirm, the pods a restart holds instead of deleting",
        description="Ask the running leader (SANDBOX_CONTROLLER_URL, SANDBOX_API_TOKEN) "
        "which pods its recovery holds: pods serving sessions its database does not know "
        "(condition RecoveryHeld). With --confirm, delete them.",
    )
    recover.add_argument(
        "--confirm", action="store_true", help="delete the held pods (their sessions are lost)"
    )
    recover.add_argument("--url", help="the controller's API (SANDBOX_CONTROLLER_URL)")
    sub.add_parser(
        "plan", help="capacity arithmetic: pods, CPU and memory for a peak", add_help=False
    )
    sub.add_parser(
        "trace", help="export a trace of real sessions, or synthesize one", add_help=False
    )
    sub.add_parser("simulate", help="replay a trace through the real scheduler", add_help=False)
    sub.add_parser(
        "usage", help="pod-seconds per org and template (CSV), from the store", add_help=False
    )
    return parser


MATPLOTLIB_MISSING = (
    "sandbox-controller: simulate --plot and --html draw with matplotlib, which is not "
    'installed: pip install matplotlib (from a source checkout: pip install -e ".[sim]")'
)


def _wants_pictures(args: list[str]) -> bool:
    # argparse takes any unique prefix of a flag (--pl, --htm) and the --flag=value form.
    return any(
        len(flag) > 3 and any(name.startswith(flag) for name in ("--plot", "--html"))
        for flag in (arg.split("=", 1)[0] for arg in args)
    )


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    typos = unknown_variables(os.environ)
    if args.command not in _SERVERS:  # the servers log them, in the log's own format
        for typo in typos:
            print(f"sandbox-controller: warning: {typo}", file=sys.stderr)

    if args.command == "plan":
        from .plan import main as plan_main

        return plan_main(rest)
    if args.command == "usage":
        from .usage import usage_main

        return usage_main(rest)
    if args.command == "simulate" and _wants_pictures(rest) and not _has_matplotlib():
        print(MATPLOTLIB_MISSING, file=sys.stderr)
        return 2
    if args.command in ("trace", "simulate"):
        # Imported here: the controller itself never loads the simulator.
        from .sim.cli import simulate_main, trace_main

        return (trace_main if args.command == "trace" else simulate_main)(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "recover":
        from .recover import recover

        try:
            settings = _settings()
        except ConfigError as exc:
            print(f"sandbox-controller: configuration error: {exc}", file=sys.stderr)
            return 2
        url = args.url or settings.controller_url
        return recover(url, settings.api_token, confirm=args.confirm)
    try:
        if args.command == "dev":
            settings = _dev_suspends(
                _dev_credentials(
                    _settings(host=args.host, port=args.port, proxy_port=args.proxy_port)
                )
            )
        else:
            settings = _settings()
        if args.command == "serve":
            _require_api_token(settings)
            if not settings.token_secret:
                raise ConfigError(
                    "SANDBOX_TOKEN_SECRET: required by serve: it signs the session tokens "
                    "the proxies verify"
                )
        if args.command == "egress-proxy" and not (settings.proxy_token or settings.api_token):
            raise ConfigError(
                "SANDBOX_PROXY_TOKEN: required by the egress proxy to ask the controller "
                "who a sandbox is and what it may reach"
            )
        if args.command == "proxy" and not (settings.proxy_token or settings.token_secret):
            raise ConfigError(
                "SANDBOX_PROXY_TOKEN: required by the proxy to ask the controller for routes "
                "and the token verify key"
            )
        if args.command in ("serve", "proxy", "egress-proxy"):
            check_secrets(settings)  # `dev` takes anything: it is one user's own machine
    except ConfigError as exc:
        print(f"sandbox-controller: configuration error: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings)
    for typo in typos:
        log.warning("%s", typo)
    listens = _listens(args.command, settings)
    taken = next((addr for addr in listens if not _free(*addr)), None)
    if taken is not None:
        print(f"sandbox-controller: port {taken[1]} on {taken[0]} is taken", file=sys.stderr)
        return 1
    try:
        uvloop.run(_main(args.command, settings, getattr(args, "to", "head")))
    except KeyboardInterrupt:
        pass
    except BadRevision as exc:
        print(f"sandbox-controller: migrate: {exc}", file=sys.stderr)
        return 2
    except DatabaseUnusable as exc:
        print(f"sandbox-controller: {exc}", file=sys.stderr)
        return 1
    except BackendError as exc:  # no cluster, no Docker daemon, no sandbox image
        print(f"sandbox-controller: SANDBOX_BACKEND={settings.backend}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A port taken since the check, or an unreachable address: one line, no traceback.
        where = " or ".join(f"{host}:{port}" for host, port in listens)
        print(
            f"sandbox-controller: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr
        )
        return 1
    return 0


def _listens(command: str, settings: Settings) -> list[tuple[str, int]]:
    """The addresses this command will listen on."""
    api = (settings.host, settings.port)
    proxy = (settings.proxy_host, settings.proxy_port)
    egress = (settings.egress_proxy_host, settings.egress_proxy_port)
    return {"dev": [api, proxy], "serve": [api], "proxy": [proxy], "egress-proxy": [egress]}.get(
        command, []
    )


def _free(host: str, port: int) -> bool:
    """False only if another process listens there (bound as the servers bind)."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


DEV_CREDENTIALS = "dev-credentials.json"


def _dev_credentials(settings: Settings) -> Settings:
    """dev's API token and token secret: from the environment if set, else the ones it
    made on its first start, kept in the state dir (so session tokens and scripts survive
    a restart), else new ones, written there for next time."""
    path = Path(settings.state_dir) / DEV_CREDENTIALS
    try:
        kept = json.loads(path.read_text())
    except FileNotFoundError:
        kept = {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"SANDBOX_STATE_DIR: cannot read {path}: {exc}") from None
    stored = {name: kept[name] for name in ("api_token", "token_secret") if kept.get(name)}
    new = {"api_token": secrets.token_urlsafe(24), "token_secret": secrets.token_urlsafe(32)}
    for name, value in new.items():
        if getattr(settings, name) is None:  # a value from the environment is never written
            stored.setdefault(name, value)
    if stored != kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only from the first byte: these open every session of this dev server.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
            json.dump(stored, out)
    made = {name: getattr(settings, name) or stored[name] for name in new}
    return settings.model_copy(update=made)


def _dev_suspends(settings: Settings) -> Settings:
    """dev shows suspend and resume out of the box: an idle sandbox is suspended, its
    archive in the state dir. Each of the two settings given in the environment wins."""
    update: dict[str, str] = {}
    if "idle_action" not in settings.model_fields_set:
        update["idle_action"] = "suspend"
    if settings.snapshot_store is None:
        update["snapshot_store"] = (Path(settings.state_dir) / "snapshots").resolve().as_uri()
    return settings.model_copy(update=update)


if __name__ == "__main__":
    sys.exit(main())
