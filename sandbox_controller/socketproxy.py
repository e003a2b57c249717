"""A filtering proxy in front of the Docker socket, for the Compose deployment.

The controller never gets the raw socket, which is root on the host. It gets this
proxy's socket, which passes only what the Docker backend does, for this stack's
sandboxes only, and answers 403 to everything else (socketproxy_policy.py decides):

- ping, version, info; the image inspect of the sandbox image;
- container lists and the event stream, narrowed to the stack's instance label;
- inspect, start, stop, kill and delete of a container that carries that label (looked
  up through the real socket first, and then addressed by its full id, so a name taken
  over in between cannot redirect the call); any other container is "no such
  container";
- a container create that is, key for key, the backend's sandbox (non-root, every
  capability dropped, a read-only root, only tmpfs mounts, the sandbox network, the
  sandbox image), re-encoded before it is forwarded;
- the sandbox network's inspect and create, in its one shape;
- with egress on, the CA bundle's upload (PUT .../archive) into a created, not yet
  started sandbox of the stack: to its bundle directory only, one PEM file, rebuilt.

Each request on a kept-alive connection is checked on its own: HTTP, not a byte splice.

    python -m sandbox_controller.socketproxy --listen /run/docker-api/docker.sock \\
        --instance agent-sandbox --network agent-sandbox --user 10001:10001 \\
        --image agent-sandbox/devsandbox:dev
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web

from .socketproxy_policy import (
    Policy,
    Refused,
    check_archive,
    check_create,
    check_network,
    check_query,
    decode,
    encode,
    owned,
    route,
    scoped_filters,
)

log = logging.getLogger(__name__)

SESSION = web.AppKey("session", aiohttp.ClientSession)
OWNED = web.AppKey("owned", OrderedDict)  # full container id -> ours (labels never change)
# A client gone ends its handler at once (an idle event stream would hold it forever).
SERVER_OPTIONS: dict[str, Any] = {"handler_cancellation": True, "shutdown_timeout": 5.0}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
MAX_BODY = 1 << 20
MAX_LOOKUP = 8 << 20  # an inspect read to check a container's labels
OWNED_CACHE = 4096


def _response_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() != "host"}


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"message": f"socket proxy: {message}"}, status=status)


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > MAX_LOOKUP:
            raise Refused("the Docker answer is too large", 502)
    return json.loads(body)


class Upstream:
    """The real Docker socket, asked what the checks need to know."""

    def __init__(self, app: web.Application, version: str) -> None:
        self.session = app[SESSION]
        self.owned: OrderedDict[str, bool] = app[OWNED]
        self.version = version

    async def get(self, path: str) -> Any:
        async with self.session.get(f"http://docker{self.version}{path}") as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise Refused(f"Docker answered {response.status} to {path}", 502)
            return await _read_json(response)

    async def own_container(self, ref: str, policy: Policy) -> str:
        """The full id of the stack's container ``ref``; 404 for any other."""
        if self.owned.get(ref):
            return ref
        info = await self.get(f"/containers/{quote(ref, safe='')}/json")
        if info is not None:
            full_id = str(info.get("Id") or "")
            labels = (info.get("Config") or {}).get("Labels") or {}
            self.owned[full_id] = owned(labels, policy)
            if len(self.owned) > OWNED_CACHE:
                self.owned.popitem(last=False)
            if self.owned[full_id]:
                return full_id
        raise Refused(f"No such container: {ref}", 404)

    async def not_started(self, full_id: str) -> None:
        """Refused unless the container was created and never started: the bundle goes
        in before anything in the sandbox runs (asked afresh: state is never cached)."""
        info = await self.get(f"/containers/{full_id}/json")
        state = (info or {}).get("State") or {}
        if state.get("Status") != "created":
            raise Refused("an archive may be uploaded only before the container starts", 409)

    async def image_id(self, policy: Policy) -> str:
        info = await self.get(f"/images/{quote(policy.image, safe='/:')}/json")
        if info is None:
            raise Refused(f"the sandbox image {policy.image} is not on this host", 404)
        return str(info.get("Id") or "")


async def _checked(
    request: web.Request, policy: Policy
) -> tuple[str, dict[str, str], bytes | None]:
    """Where to forward the request (path and query) and the body to send: what was
    checked, rebuilt from its parts (a JSON document, or the bundle's tar)."""
    found = route(request.method, request.path)
    if found is None:
        raise Refused(f"{request.method} {request.path} is not allowed")
    the_route, parts = found
    check_query(the_route.query, request.query.keys())
    query = {k: request.query[k] for k in request.query}
    version = parts.get("version", "")
    upstream = Upstream(request.app, version)
    body = await request.read() if request.can_read_body else b""
    if body and the_route.kind not in ("create", "network-create", "archive"):
        raise Refused(f"{request.method} {request.path} takes no body", 400)
    path = request.path
    if the_route.kind == "scoped":
        query["filters"] = scoped_filters(query.get("filters"), policy)
    elif the_route.kind == "image" and parts["image"] != policy.image:
        raise Refused(f"only the sandbox image {policy.image} may be inspected")
    elif the_route.kind == "network" and parts["network"] != policy.network:
        raise Refused(f"only the sandbox network {policy.network} may be inspected")
    elif the_route.kind == "container":
        full_id = await upstream.own_container(parts["ref"], policy)
        path = path.replace(f"/containers/{parts['ref']}", f"/containers/{full_id}", 1)
    elif the_route.kind == "archive":
        pem_tar = check_archive(query.get("path"), body, policy)
        full_id = await upstream.own_container(parts["ref"], policy)
        await upstream.not_started(full_id)
        return f"{version}/containers/{full_id}/archive", query, pem_tar
    elif the_route.kind == "create":
        image_id = await upstream.image_id(policy)
        return path, query, encode(check_create(decode(body), policy, image_id))
    elif the_route.kind == "network-create":
        return path, query, encode(check_network(decode(body), policy))
    return path, query, None


def make_app(upstream: str, policy: Policy) -> web.Application:
    async def start(app: web.Application) -> None:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=upstream),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )
        app[OWNED] = OrderedDict()

    async def stop(app: web.Application) -> None:
        await app[SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            path, query, body = await _checked(request, policy)
        except Refused as refused:
            log.warning("refused %s %s: %s", request.method, request.path, refused)
            return _refuse(refused.status, str(refused))
        headers = {"User-Agent": request.headers.get("User-Agent", "socket-proxy")}
        if body is not None:
            archive = request.path.endswith("/archive")
            headers["Content-Type"] = "application/x-tar" if archive else "application/json"
        url = f"http://docker{quote(path)}" + (f"?{urlencode(query)}" if query else "")
        async with request.app[SESSION].request(
            request.method, url, headers=headers, data=body
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status,
                headers=_response_headers(upstream_response.headers.items()),
            )
            await response.prepare(request)
            # Event streams are long-lived: pass each chunk on as it comes.
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application(client_max_size=MAX_BODY)
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
    # The controller's SANDBOX_DOCKER_* settings, which this proxy holds it to.
    parser.add_argument("--instance", default="agent-sandbox")
    parser.add_argument("--network", default="agent-sandbox")
    parser.add_argument("--user", default="10001:10001")
    parser.add_argument("--image", default="agent-sandbox/devsandbox:dev")
    parser.add_argument("--runtime", default="", help="empty: Docker's default runtime")
    # SANDBOX_EGRESS not off: sandboxes are on the internal egress network instead.
    parser.add_argument("--egress", default="off", choices=["off", "audit", "enforce"])
    parser.add_argument("--egress-network", default="agent-sandbox-egress")
    parser.add_argument("--egress-subnet", default="", help="empty: Docker picks one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    egress = args.egress != "off"
    try:
        policy = Policy(
            args.instance,
            args.user,
            args.egress_network if egress else args.network,
            args.image,
            args.runtime or None,
            internal=egress,
            subnet=(args.egress_subnet or None) if egress else None,
        )
    except ValueError as exc:
        parser.error(str(exc))
    app = make_app(args.upstream, policy)
    if args.listen:
        if os.path.exists(args.listen):
            os.unlink(args.listen)
        os.umask(0o777 & ~int(args.socket_mode, 8))  # the socket is made with this mode
        web.run_app(app, path=args.listen, print=None, **SERVER_OPTIONS)
    else:
        web.run_app(app, host=args.host, port=args.port or 2375, print=None, **SERVER_OPTIONS)


if __name__ == "__main__":
    main()
