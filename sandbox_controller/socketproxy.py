"""A filtering proxy in front of the Docker socket, for the Compose deployment.

The controller never gets the raw socket, which is root on the host. It gets this
proxy's socket, which passes only the calls the Docker backend makes (the
``docker-socket-proxy`` pattern: ping, version, info, events, image inspect, container
create/inspect/list/start/stop/delete, network inspect/create) and answers 403 to
everything else: exec, attach, archives, builds, pulls, volumes, swarm, plugins.

It goes one step further than that pattern: a container create must look like a
sandbox (no privileges, no added capabilities, no bind mounts or devices, no host
namespaces, a read-only root filesystem, every capability dropped), so a controller
taken over cannot start a container that owns the host. Each request on a kept-alive
connection is checked on its own: HTTP, not a byte splice.

    python -m sandbox_controller.socketproxy --listen /run/docker-api/docker.sock
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

_VERSION = r"(/v[0-9.]+)?"
_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
ALLOWED: list[tuple[str, re.Pattern[str]]] = [
    (method, re.compile(f"^{_VERSION}{path}$"))
    for method, path in [
        ("GET", "/_ping"),
        ("HEAD", "/_ping"),
        ("GET", "/version"),
        ("GET", "/info"),
        ("GET", "/events"),
        ("GET", rf"/images/{_ID}(/{_ID})*(:{_ID})?/json"),
        ("GET", "/containers/json"),
        ("POST", "/containers/create"),
        ("GET", rf"/containers/{_ID}/json"),
        ("POST", rf"/containers/{_ID}/start"),
        ("POST", rf"/containers/{_ID}/stop"),
        ("POST", rf"/containers/{_ID}/kill"),
        ("DELETE", rf"/containers/{_ID}"),
        ("GET", "/networks"),
        ("GET", rf"/networks/{_ID}"),
        ("POST", "/networks/create"),
    ]
]
SESSION = web.AppKey("session", aiohttp.ClientSession)
# A client gone ends its handler at once (an idle event stream would hold it forever).
SERVER_OPTIONS: dict[str, Any] = {"handler_cancellation": True, "shutdown_timeout": 5.0}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
MAX_CREATE_BODY = 1 << 20


def allowed(method: str, path: str) -> bool:
    return any(method == m and pattern.match(path) for m, pattern in ALLOWED)


def unsafe_create(config: dict[str, Any]) -> str | None:
    """Why a container create is refused, or None for a sandbox-shaped one."""
    host: dict[str, Any] = config.get("HostConfig") or {}
    if host.get("Privileged"):
        return "privileged containers are not allowed"
    if host.get("CapAdd"):
        return "added capabilities are not allowed"
    if "ALL" not in (host.get("CapDrop") or []):
        return "every capability must be dropped (CapDrop: [ALL])"
    if not host.get("ReadonlyRootfs"):
        return "the root filesystem must be read-only"
    if host.get("Binds") or host.get("VolumesFrom") or host.get("Devices"):
        return "bind mounts, shared volumes and devices are not allowed"
    if any((m or {}).get("Type") != "tmpfs" for m in host.get("Mounts") or []):
        return "only tmpfs mounts are allowed"
    for key in ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"):
        if str(host.get(key) or "") == "host" or str(host.get(key) or "").startswith("container:"):
            return f"{key} {host[key]} is not allowed"
    if any("unconfined" in str(opt) for opt in host.get("SecurityOpt") or []):
        return "unconfined security profiles are not allowed"
    if str(config.get("User") or "0").split(":")[0] in ("", "0", "root"):
        return "containers must run as a non-root user"
    return None


def _forward_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "host"}


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"message": f"socket proxy: {message}"}, status=status)


def make_app(upstream: str) -> web.Application:
    async def start(app: web.Application) -> None:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=upstream),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def stop(app: web.Application) -> None:
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        if not allowed(request.method, request.path):
            log.warning("refused %s %s", request.method, request.path)
            return _refuse(403, f"{request.method} {request.path} is not allowed")
        body = await request.read() if request.can_read_body else None
        if body is not None and len(body) > MAX_CREATE_BODY:
            return _refuse(413, "request body too large")
        if request.path.endswith("/containers/create"):
            try:
                why = unsafe_create(json.loads(body or b"{}"))
            except (ValueError, AttributeError):
                why = "the body is not a container configuration"
            if why is not None:
                log.warning("refused a container create: %s", why)
                return _refuse(403, why)
        session = request.app[SESSION]
        async with session.request(
            request.method,
            f"http://docker{request.rel_url}",
            headers=_forward_headers(request.headers.items()),
            data=body,
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status,
                headers=_forward_headers(upstream_response.headers.items()),
            )
            await response.prepare(request)
            # Event streams are long-lived: pass each chunk on as it comes.
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=MAX_CREATE_BODY)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", help="unix socket path to serve on")
    parser.add_argument("--port", type=int, help="or a TCP port (on --host)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", default="/var/run/docker.sock")
    parser.add_argument("--socket-mode", default="660", help="octal mode of --listen")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = make_app(args.upstream)
    if args.listen:
        if os.path.exists(args.listen):
            os.unlink(args.listen)
        os.umask(0o777 & ~int(args.socket_mode, 8))  # the socket is made with this mode
        web.run_app(app, path=args.listen, print=None, **SERVER_OPTIONS)
    else:
        web.run_app(app, host=args.host, port=args.port or 2375, print=None, **SERVER_OPTIONS)


if __name__ == "__main__":
    main()
