"""KubeSim: the fake API server as one object with start/stop and run-time knobs."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from ..aiotasks import TaskGroup
from ..clock import Clock
from .cluster import Cluster
from .faults import CallRecord, Faults
from .server import ApiServer
from .store import ApiError, Change, Obj, Store


def write_kubeconfig(path: str | Path, server: str, token: str, namespace: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubesim", "cluster": {"server": server}}],
        "users": [{"name": "kubesim", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kubesim",
                "context": {"cluster": "kubesim", "user": "kubesim", "namespace": namespace},
            }
        ],
        "current-context": "kubesim",
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


class KubeSim:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        namespace: str = "default",
        nodes: int = 3,
        node_cpu: str = "4",
        node_memory: str = "16Gi",
        startup_delay: float = 0.5,
        termination_delay: float = 0.1,
        workload: bool = False,
        app_delay: float | Callable[[], float] = 0.0,
        clock: Clock | None = None,
        faults: Faults | None = None,
        token: str | None = "kubesim-token",
        users: dict[str, str] | None = None,
        require_auth: bool = False,
        history_limit: int = 10_000,
        bookmark_interval: float = 5.0,
        kubeconfig: str | Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.namespace = namespace
        self.token = token
        # Bearer token -> user name, recorded with each call (the default token is
        # "kubesim"); with require_auth, any other token is refused.
        self.users: dict[str, str] = {token: "kubesim"} if token else {}
        self.users.update(users or {})
        self.require_auth = require_auth
        self.faults = faults or Faults()
        self.bookmark_interval = bookmark_interval
        self.kubeconfig_path = Path(kubeconfig) if kubeconfig else None
        self.rng = random.Random(seed)
        self.tasks = TaskGroup("kubesim")
        self.store = Store(history_limit=history_limit, seed=seed)
        self.cluster = Cluster(
            self.store,
            self.tasks,
            startup_delay=startup_delay,
            termination_delay=termination_delay,
            workload=workload,
            app_delay=app_delay,
            clock=clock,
        )
        self.calls: list[CallRecord] = []
        self.max_pods_seen = 0
        self.store.listeners.append(self._count_pods)
        self._initial_nodes = (nodes, node_cpu, node_memory)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> KubeSim:
        count, cpu, memory = self._initial_nodes
        for i in range(count):
            self.cluster.add_node(f"kubesim-node-{i}", cpu, memory)
        self._runner = web.AppRunner(
            ApiServer(self).app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.kubeconfig_path is not None:
            write_kubeconfig(self.kubeconfig_path, self.url, self.token or "", self.namespace)
        self.tasks.start(self.cluster.run(), "scheduler")
        self.tasks.start(self._cut_periodically(), "watch-cutter")
        return self

    async def stop(self) -> None:
        # Streams first, so the runner's shutdown does not wait on open watches.
        self.store.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.tasks.stop(timeout=2.0)
        await self.cluster.close()

    async def __aenter__(self) -> KubeSim:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def write_kubeconfig(self, path: str | Path) -> Path:
        self.kubeconfig_path = write_kubeconfig(path, self.url, self.token or "", self.namespace)
        return self.kubeconfig_path

    def kubeconfig_for(self, user: str, token: str, path: str | Path) -> Path:
        """A kubeconfig of a user of its own, so the call log tells its calls apart."""
        self.users[token] = user
        return write_kubeconfig(path, self.url, token, self.namespace)

    def user_of(self, authorization: str | None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return ""
        return self.users.get(token.strip(), "")

    # -- knobs -------------------------------------------------------------------------

    def set_faults(self, **values: Any) -> None:
        self.faults.update(values)

    def cut_watches(self) -> int:
        """Drop every open watch stream now; returns how many there were."""
        return self.store.cut_watches()

    def compact(self) -> None:
        """Forget watch history: a watch resuming from before now gets 410 Expired."""
        self.store.compact()

    def add_node(
        self, name: str, cpu: str = "4", memory: str = "16Gi", labels: dict[str, str] | None = None
    ) -> Obj:
        return self.cluster.add_node(name, cpu, memory, labels)

    def remove_node(self, name: str) -> list[str]:
        return self.cluster.remove_node(name)

    def exit_container(self, name: str, exit_code: int = 1, namespace: str | None = None) -> Obj:
        return self.cluster.exit_container(namespace or self.namespace, name, exit_code)

    def app_down(self, name: str, namespace: str | None = None) -> None:
        """A pod's app stops answering, its container still running (workload only)."""
        self.cluster.app_down(name, namespace or self.namespace)

    def apps(self) -> dict[str, dict[str, Any]]:
        """Per pod, on kubesim's clock (monotonic): when its app first answered, and
        the requests it received (path, User-Agent, when)."""
        cluster = self.cluster
        return {
            name: {"answered": at, "requests": list(cluster.app_requests.get(name, ()))}
            for name, at in cluster.app_answered.items()
        }

    def create_configmap(
        self, name: str, data: dict[str, str] | None = None, namespace: str | None = None
    ) -> Obj:
        body = {"metadata": {"name": name}, "data": data or {}}
        return self.store.create("configmaps", namespace or self.namespace, body)

    async def _cut_periodically(self) -> None:
        while True:
            every = self.faults.cut_watches_every
            await asyncio.sleep(every if every > 0 else 0.5)
            if self.faults.cut_watches_every > 0:
                self.store.cut_watches()

    # -- what happened -----------------------------------------------------------------

    def _count_pods(self, change: Change) -> None:
        if change.resource == "pods":
            self.max_pods_seen = max(self.max_pods_seen, self.store.count("pods"))

    def pods(self, namespace: str | None = None) -> list[Obj]:
        return self.store.query("pods", namespace, lambda o: True)

    def count_calls(
        self, verb: str | None = None, resource: str | None = None, status: int | None = None
    ) -> int:
        return sum(
            1
            for c in self.calls
            if (verb is None or c.verb == verb)
            and (resource is None or c.resource == resource)
            and (status is None or c.status == status)
        )

    def stats(self) -> dict[str, Any]:
        by_call = Counter(f"{c.verb} {c.resource} {c.status}".strip() for c in self.calls)
        by_user = Counter(c.user for c in self.calls)
        return {
            "calls": len(self.calls),
            "by_call": dict(sorted(by_call.items())),
            "by_user": dict(sorted(by_user.items())),
            "max_pods_seen": self.max_pods_seen,
            "pods": self.store.count("pods"),
            "nodes": self.store.count("nodes"),
            "resource_version": self.store.rv,
            "faults": self.faults.as_dict(),
        }

    # -- pods as the admission chain would leave them ----------------------------------

    @staticmethod
    def admit_pod(body: Obj) -> Obj:
        pod = copy.deepcopy(body)
        spec = pod.setdefault("spec", {})
        if not spec.get("containers"):
            raise ApiError(422, "Invalid", "Pod is invalid: spec.containers: Required value")
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.pop("nodeName", None)  # binding is the scheduler's job here
        pod["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        return pod

    # -- admin HTTP --------------------------------------------------------------------

    async def admin(self, request: web.Request) -> web.Response:
        """``/_kubesim/...``: drive an out-of-process kubesim from a test or benchmark."""
        action = request.path.removeprefix("/_kubesim").strip("/")
        body: dict[str, Any] = {}
        if request.can_read_body:
            body = json.loads(await request.read() or b"{}")
        try:
            result = self._admin_action(request.method, action, body)
        except ApiError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        return web.json_response(result)

    def _admin_action(self, method: str, action: str, body: dict[str, Any]) -> Any:
        if action == "stats" and method == "GET":
            return self.stats()
        if action == "apps" and method == "GET":
            return self.apps()
        if action == "calls" and method == "GET":
            return [c.__dict__ for c in self.calls]
        if action == "users" and method == "POST":
            self.users[str(body["token"])] = str(body["name"])
            return {"users": sorted(set(self.users.values()))}
        if action == "faults" and method == "GET":
            return self.faults.as_dict()
        if action == "faults" and method == "POST":
            self.faults.update(body)
            return self.faults.as_dict()
        if action == "cut-watches" and method == "POST":
            return {"cut": self.cut_watches()}
        if action == "compact" and method == "POST":
            self.compact()
            return {"resourceVersion": str(self.store.rv)}
        if action == "nodes" and method == "POST":
            return self.add_node(
                body["name"], body.get("cpu", "4"), body.get("memory", "16Gi"), body.get("labels")
            )
        if action.startswith("nodes/") and method == "DELETE":
            return {"deleted_pods": self.remove_node(action.removeprefix("nodes/"))}
        if action.startswith("pods/") and action.endswith("/exit") and method == "POST":
            name = action.removeprefix("pods/").removesuffix("/exit")
            return self.exit_container(name, int(body.get("exit_code", 1)), body.get("namespace"))
        if action.startswith("pods/") and action.endswith("/evict") and method == "POST":
            # The kubelet evicts it (node pressure, ephemeral storage over its limits).
            name = action.removeprefix("pods/").removesuffix("/evict")
            message = str(body.get("message", "The node was low on resource: ephemeral-storage."))
            ns = body.get("namespace") or self.namespace
            return self.cluster.evict_for_pressure(ns, name, message)
        if action.startswith("pods/") and action.endswith("/app-down") and method == "POST":
            name = action.removeprefix("pods/").removesuffix("/app-down")
            self.app_down(name, body.get("namespace"))
            return {"app_down": name}
        if action == "configmaps" and method == "POST":
            return self.create_configmap(body["name"], body.get("data"), body.get("namespace"))
        raise ApiError(404, "NotFound", f"no kubesim admin action {method} {action}")


def default_kubeconfig_path() -> str:
    return os.path.join(os.getcwd(), ".cache", "kubesim", "kubeconfig")
