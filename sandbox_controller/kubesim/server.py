"""The HTTP face of kubesim: core/v1 REST and watch, discovery, and the admin endpoints.

Paths are parsed by hand rather than routed, because the API server's URL space is
regular (``/api/v1[/namespaces/{ns}]/{resource}[/{name}]``) and one parser keeps list,
watch and item calls in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from .discovery import (
    api_groups,
    api_resources,
    api_versions,
    policy_group,
    policy_resources,
    version_info,
)
from .faults import CallRecord
from .patch import PatchError, apply_patch
from .selectors import Matcher, SelectorError, field_matcher, label_matcher
from .store import CLUSTER_SCOPED, KINDS, ApiError, Expired, Obj, api_version

if TYPE_CHECKING:
    import random

    from .cluster import Cluster
    from .faults import Faults
    from .store import Store


class Simulation(Protocol):
    """What the HTTP face needs of the simulation behind it (sim.KubeSim); named here
    so that the server does not import the module that builds it."""

    store: Store
    cluster: Cluster
    faults: Faults
    rng: random.Random
    calls: list[CallRecord]
    users: dict[str, str]
    require_auth: bool
    bookmark_interval: float

    def user_of(self, authorization: str | None) -> str: ...

    def admit_pod(self, body: Obj) -> Obj: ...

    async def admin(self, request: web.Request) -> web.StreamResponse: ...


log = logging.getLogger(__name__)
RECORD = web.RequestKey("record", CallRecord)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"


def flag(value: str | None) -> bool:
    """Booleans in query strings as Go's strconv.ParseBool reads them."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


# Where each served group/version's paths begin.
_PREFIXES = {"/api/v1/": "v1", "/apis/policy/v1/": "policy/v1"}


def _is_resource_path(path: str) -> bool:
    return any(path.startswith(prefix) for prefix in _PREFIXES)


def _route(path: str) -> tuple[str | None, str, str | None, str | None]:
    """(namespace, resource, name, subresource) of a core/v1 or policy/v1 path, or
    ApiError 404 (a resource asked for under a group that does not serve it included)."""
    prefix = next((p for p in _PREFIXES if path.startswith(p)), None)
    parts = path[len(prefix) :].strip("/").split("/") if prefix else []
    namespace = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
    if (
        prefix is None
        or not parts
        or parts[0] not in KINDS
        or api_version(parts[0]) != _PREFIXES[prefix]
        or len(parts) > 3
    ):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    resource = parts[0]
    if resource in CLUSTER_SCOPED:
        namespace = None
    return (
        namespace,
        resource,
        parts[1] if len(parts) > 1 else None,
        (parts[2] if len(parts) > 2 else None),
    )


def classify(request: web.Request) -> tuple[str, str]:
    """(verb, resource) for the call record."""
    path = request.path
    if path.startswith("/_kubesim"):
        return "admin", ""
    if path.rstrip("/") == TOKEN_REVIEWS:
        return "create", "tokenreviews"
    if not _is_resource_path(path):
        return "discovery", ""
    try:
        _, resource, name, sub = _route(path)
    except ApiError:
        return "other", ""
    method = request.method
    if sub == "eviction":
        return "create", "pods/eviction"
    if method == "GET":
        if name:
            return "get", resource
        return ("watch" if flag(request.query.get("watch")) else "list"), resource
    verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    verb = verbs.get(method, "other")
    if verb == "delete" and not name:
        verb = "deletecollection"
    return verb, resource


class ApiServer:
    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.app = web.Application(middlewares=[self._middleware])
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        verb, resource = classify(request)
        sim = self.sim
        record = CallRecord(
            request.method,
            request.path_qs,
            verb,
            resource,
            at=time.time(),
            user=sim.user_of(request.headers.get("Authorization")),
            user_agent=request.headers.get("User-Agent", ""),
        )
        request[RECORD] = record
        if verb != "admin":
            sim.calls.append(record)
        try:
            if verb != "admin":
                # Off by default: kubectl sends no bearer token over plain http.
                if sim.require_auth and sim.users and not record.user:
                    raise ApiError(401, "Unauthorized", "Unauthorized")
                if sim.faults.latency > 0:
                    await asyncio.sleep(sim.faults.latency)
                injected = sim.faults.pick_error(verb, sim.rng) or sim.faults.refusal(
                    verb, resource, _namespace(request.path)
                )
                if injected is not None:
                    raise injected
            response = await handler(request)
            if verb != "admin" and 200 <= response.status < 300:
                lost = sim.faults.timeout_after_write(verb, sim.rng)
                if lost is not None:
                    raise lost  # done, yet the caller hears it was not
            record.status = response.status
            return response
        except ApiError as exc:
            record.status = exc.code
            return _json(exc.status(), exc.code, exc.headers)
        except (SelectorError, PatchError) as exc:
            record.status = 400 if isinstance(exc, SelectorError) else 422
            return _json(ApiError(record.status, "BadRequest", str(exc)).status(), record.status)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/_kubesim"):
            return await self.sim.admin(request)
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(version_info())
        if path == "/api":
            return _json(api_versions(request.host))
        if path == "/apis":
            return _json(api_groups())
        if path == "/apis/policy":
            return _json(policy_group())
        if path == TOKEN_REVIEWS and request.method == "POST":
            return _json(self._review(await self._body(request), request[RECORD].user), 201)
        if path == "/api/v1":
            return _json(api_resources())
        if path == "/apis/policy/v1":
            return _json(policy_resources())
        if not _is_resource_path(path):
            # /openapi/v2, /openapi/v3 and friends: like a server with them switched off.
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace, resource, name, sub = _route(path)
        if sub == "eviction" and resource == "pods" and name and request.method == "POST":
            return await self._evict(request, namespace or "", name)
        if sub is not None:
            if sub != "status" or request.method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{sub} is not supported by kubesim")
        if name is None:
            if request.method == "GET":
                if flag(request.query.get("watch")):
                    return await self._watch(request, resource, namespace)
                return self._list(request, resource, namespace)
            if request.method == "POST" and (namespace is not None or resource in CLUSTER_SCOPED):
                return await self._create(request, resource, namespace or "")
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
        ns = namespace or ""
        if request.method == "GET":
            return _json(self._shown(resource, self.sim.store.get(resource, ns, name)))
        if request.method == "PUT":
            return _json(self.sim.store.update(resource, ns, name, await self._body(request)))
        if request.method == "PATCH":
            return await self._patch(request, resource, ns, name)
        if request.method == "DELETE":
            return await self._delete(request, resource, ns, name)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")

    def _review(self, body: Any, reviewer: str) -> Obj:
        """A TokenReview, as the API server answers it: the token is authenticated if it
        is one of kubesim's users' (the user name is what it was registered as). Only a
        known caller may ask (RBAC's create on tokenreviews, here: any known user)."""
        if not reviewer:
            raise ApiError(403, "Forbidden", "tokenreviews is forbidden: unknown user")
        spec = body.get("spec") if isinstance(body, dict) else None
        token = spec.get("token") if isinstance(spec, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(422, "Invalid", "TokenReview.spec.token: Required value")
        user = self.sim.users.get(token, "")
        status: Obj = {"authenticated": bool(user)}
        if user:
            status["user"] = {"username": user, "uid": f"uid-{user}", "groups": []}
        else:
            status["error"] = "invalid bearer token"
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token},
            "status": status,
        }

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None

    @staticmethod
    def _matcher(request: web.Request) -> Matcher:
        labels = label_matcher(request.query.get("labelSelector"))
        fields = field_matcher(request.query.get("fieldSelector"))
        return lambda obj: labels(obj) and fields(obj)

    def _list(self, request: web.Request, resource: str, namespace: str | None) -> web.Response:
        items = self.sim.store.query(resource, namespace, self._matcher(request))
        return _json(
            {
                "kind": KINDS[resource] + "List",
                "apiVersion": api_version(resource),
                "metadata": {"resourceVersion": str(self.sim.store.rv)},
                "items": [self._shown(resource, item) for item in items],
            }
        )

    def _shown(self, resource: str, obj: Obj) -> Obj:
        """A budget is shown with the status the disruption controller would give it."""
        if resource == "poddisruptionbudgets":
            return self.sim.cluster.disruption.with_status(obj)
        return obj

    async def _evict(self, request: web.Request, namespace: str, name: str) -> web.Response:
        """The Eviction API (policy/v1 Eviction): 201 when the pod may go, 429 while its
        budget holds (disruption.py)."""
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an Eviction object")
        pod = self.sim.store.get("pods", namespace, name)
        self.sim.cluster.disruption.check(pod)
        grace_raw = (body.get("deleteOptions") or {}).get("gracePeriodSeconds")
        grace = None if grace_raw is None else float(grace_raw)
        self.sim.cluster.evict_pod(namespace, name, grace)
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return _json(status | {"code": 201}, 201)

    async def _create(self, request: web.Request, resource: str, namespace: str) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body must be an object")
        if body.get("metadata", {}).get("namespace") not in (None, "", namespace):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match")
        if resource == "pods":
            body = self.sim.admit_pod(body)
        created = self.sim.store.create(resource, namespace, body)
        return _json(created, 201)

    async def _patch(
        self, request: web.Request, resource: str, namespace: str, name: str
    ) -> web.Response:
        current = self.sim.store.get(resource, namespace, name)
        patched = apply_patch(request.content_type, current, await self._body(request))
        # A resourceVersion in the patch is a precondition, checked against the stored one.
        return _json(self.sim.store.update(resource, namespace, name, patched))

    async def _delete(
        self, request: web.Request, resource: str, namespace: str, name: str
    ) -> web.Response:
        options = await self._body(request)
        grace_raw = request.query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        grace = None if grace_raw is None else float(grace_raw)
        current = self.sim.store.get(resource, namespace, name)
        wanted = (options.get("preconditions") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: ResourceVersion in precondition: {wanted}, "
                f"ResourceVersion in object meta: {current['metadata']['resourceVersion']}",
            )
        if resource == "pods":
            return _json(self.sim.cluster.delete_pod(namespace, name, grace))
        return _json(self.sim.store.delete(resource, namespace, name))

    async def _watch(
        self, request: web.Request, resource: str, namespace: str | None
    ) -> web.StreamResponse:
        store = self.sim.store
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        bookmarks = flag(request.query.get("allowWatchBookmarks"))
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        response.enable_chunked_encoding()
        try:
            backlog, watcher = store.subscribe(
                resource, namespace, self._matcher(request), request.query.get("resourceVersion")
            )
        except Expired as exc:
            # As the real server: 200, then one ERROR event carrying a 410 Status.
            await response.prepare(request)
            error = ApiError(410, "Expired", str(exc)).status()
            await response.write(_event("ERROR", error))
            await response.write_eof()
            return response
        await response.prepare(request)
        request[RECORD].status = 200
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for type_, obj in backlog:
                await response.write(_event(type_, obj))
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait = min(left, self.sim.bookmark_interval) if bookmarks else left
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        bookmark = {
                            "kind": KINDS[resource],
                            "apiVersion": api_version(resource),
                            "metadata": {"resourceVersion": str(store.rv)},
                        }
                        await response.write(_event("BOOKMARK", bookmark))
                    continue
                if item is None:
                    # A cut: drop the connection mid-stream, as a dying apiserver or a
                    # load balancer would; the client sees an incomplete chunked body.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await response.write(_event(*item))
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away
        finally:
            store.unsubscribe(watcher)
        return response


def _event(type_: str, obj: Obj) -> bytes:
    return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _namespace(path: str) -> str:
    """The namespace a namespaced path names ("" for a cluster-wide one)."""
    parts = path.strip("/").split("/")
    return parts[3] if len(parts) > 3 and parts[2] == "namespaces" else ""
