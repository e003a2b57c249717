"""The simulated control plane: a scheduler that places pods by CPU and memory
requests, a kubelet that starts them after a delay, and node lifecycle.

Each running pod gets its own loopback address in 127.1.0.1-127.255.255.254, and
optionally a devsandbox listening there on the pod port, so traffic reaches a pod as in
a cluster. Two kubesims may run on one machine (parallel test runs, a benchmark beside
the suite): each starts allocating at its own random point of that range, and with
workloads an address whose pod port is already taken is skipped.

A pod whose spec declares a readinessProbe turns Ready only at a probe tick of the
simulated kubelet after its app answers (probes.py); ``app_delay`` is how long the app
takes to answer once its container runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import httpx

from ..aiotasks import TaskGroup
from ..clock import Clock, SystemClock
from ..quantities import cpu_millis, memory_bytes
from ..sandbox_contract import ENV_CLAIM_SECRET, POD_PORT
from .disruption import EVICTION_MESSAGE, Disruption
from .probes import KUBE_PROBE_AGENT, ProbeTick, ReadinessProbe, readiness_probe
from .store import Change, Obj, Store, now_rfc3339

log = logging.getLogger(__name__)

_FIRST_POD_IP = int(ipaddress.IPv4Address("127.1.0.1"))
_LAST_POD_IP = int(ipaddress.IPv4Address("127.255.255.254"))
# Addresses tried for one pod before giving up: only a listener on the pod port of every
# loopback address (a wildcard bind) takes this many.
_BIND_ATTEMPTS = 256
# Probe ticks and app requests kept for tests and benchmarks to read (the latest).
_KEPT = 100_000


def pod_requests(pod: Obj) -> tuple[int, int]:
    """(millicores, bytes) the scheduler reserves; limits stand in for missing requests."""
    cpu = mem = 0
    for container in pod.get("spec", {}).get("containers", []):
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        cpu += cpu_millis(wanted.get("cpu", 0))
        mem += memory_bytes(wanted.get("memory", 0))
    return cpu, mem


def _env_value(pod: Obj, name: str) -> str | None:
    """A plain env value of the pod's first container that sets ``name``."""
    for container in pod["spec"].get("containers", []):
        for entry in container.get("env") or []:
            if entry.get("name") == name and isinstance(entry.get("value"), str):
                return str(entry["value"])
    return None


def _condition(
    type_: str, status: bool, reason: str | None = None, message: str | None = None
) -> Obj:
    cond: Obj = {"type": type_, "status": "True" if status else "False"}
    cond["lastTransitionTime"] = now_rfc3339()
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _set_condition(pod: Obj, cond: Obj) -> None:
    conditions = [c for c in pod["status"].get("conditions", []) if c["type"] != cond["type"]]
    pod["status"]["conditions"] = [*conditions, cond]


def _holder(pod: Obj | None) -> str | None:
    """The node whose capacity this pod holds, if any: bound and not finished."""
    if pod is None or pod["status"].get("phase") in ("Failed", "Succeeded"):
        return None
    node = pod["spec"].get("nodeName")
    return str(node) if node else None


class Cluster:
    def __init__(
        self,
        store: Store,
        tasks: TaskGroup,
        *,
        startup_delay: float = 0.5,
        termination_delay: float = 0.1,
        workload: bool = False,
        app_delay: float | Callable[[], float] = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.startup_delay = startup_delay
        self.termination_delay = termination_delay
        self.workload = workload
        # Seconds from a container running to its app answering (a callable: drawn per
        # pod). The app's start and the kubelet's probes run on ``clock``.
        self.app_delay = app_delay
        self.clock: Clock = clock or SystemClock()
        # Every probe the kubelet ran, and when each pod's app first answered (the
        # clock's monotonic time), for tests and benchmarks to read.
        self.probe_ticks: deque[ProbeTick] = deque(maxlen=_KEPT)
        self.app_answered: dict[str, float] = {}
        # Workload pods: (path, User-Agent, the clock's monotonic time) of each request
        # their app received.
        self.app_requests: dict[str, deque[tuple[str, str, float]]] = {}
        self._app_up: set[str] = set()  # pod uids whose app answers (no workload)
        self._probing: dict[str, asyncio.Task[Any]] = {}
        self._http: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        # Random, never seeded: two kubesims with the same seed must still not collide.
        self._next_ip = random.SystemRandom().randint(_FIRST_POD_IP, _LAST_POD_IP)
        self._servers: dict[str, Any] = {}  # pod uid -> uvicorn.Server
        self._starting: dict[str, asyncio.Task[Any]] = {}
        # Kept up to date from every change, so a scheduling pass costs what is pending,
        # not a scan of every pod: at thousands of pods the scans made kubesim compete
        # with the controller it is meant to exercise.
        self._pending: dict[tuple[str, str], None] = {}  # unbound pods, oldest first
        self._used: dict[str, list[int]] = {}  # node -> [cpu millis, memory bytes] held
        self.disruption = Disruption(store)
        store.listeners.append(self._on_change)

    # -- nodes -------------------------------------------------------------------------

    def add_node(
        self, name: str, cpu: str = "4", memory: str = "16Gi", labels: dict[str, str] | None = None
    ) -> Obj:
        node = {
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [_condition("Ready", True, "KubeletReady")],
            },
        }
        return self.store.create("nodes", "", node)

    def remove_node(self, name: str) -> list[str]:
        """The node goes, and its pods with it (node lifecycle and pod GC, compressed)."""
        self.store.delete("nodes", "", name)
        gone = []
        for pod in self.store.query("pods", None, lambda p: p["spec"].get("nodeName") == name):
            self._stop_pod(pod)
            self.store.delete("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            gone.append(pod["metadata"]["name"])
        return gone

    # -- the scheduler -----------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        if change.resource == "pods":
            self._track(change)
        # New pods, freed capacity or new nodes are what can change a placement.
        ended = (
            change.resource == "pods"
            and change.obj["status"].get("phase") in ("Failed", "Succeeded")
            and (change.old or {}).get("status", {}).get("phase") != change.obj["status"]["phase"]
        )
        if (
            ended
            or change.resource == "nodes"
            or (change.resource == "pods" and change.type in ("ADDED", "DELETED"))
        ):
            self._wake.set()

    def _track(self, change: Change) -> None:
        obj = change.obj
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        gone = change.type == "DELETED"
        if (
            not gone
            and not obj["spec"].get("nodeName")
            and not obj["metadata"].get("deletionTimestamp")
        ):
            self._pending.setdefault(key, None)
        else:
            self._pending.pop(key, None)
        before = _holder(change.old)
        after = None if gone else _holder(obj)
        if before != after:
            if before is not None and change.old is not None:
                self._hold(before, change.old, -1)
            if after is not None:
                self._hold(after, obj, +1)

    def _hold(self, node: str, pod: Obj, sign: int) -> None:
        cpu, mem = pod_requests(pod)
        used = self._used.setdefault(node, [0, 0])
        used[0] += sign * cpu
        used[1] += sign * mem

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.schedule_pending()

    def _free(self) -> dict[str, tuple[int, int, Obj]]:
        free: dict[str, tuple[int, int, Obj]] = {}
        for node in self.store.query("nodes", None, lambda o: True):
            if node.get("spec", {}).get("unschedulable"):
                continue  # cordoned (kubectl cordon, the first step of a drain)
            alloc = node["status"]["allocatable"]
            used = self._used.get(node["metadata"]["name"], [0, 0])
            free[node["metadata"]["name"]] = (
                cpu_millis(alloc["cpu"]) - used[0],
                memory_bytes(alloc["memory"]) - used[1],
                node,
            )
        return free

    def schedule_pending(self) -> None:
        pending = [self.store.get("pods", ns, name) for ns, name in list(self._pending)]
        if not pending:
            return
        free = self._free()
        for pod in pending:
            cpu, mem = pod_requests(pod)
            selector = pod["spec"].get("nodeSelector") or {}
            reasons: Counter[str] = Counter()
            chosen = None
            for name, (c, m, node) in sorted(free.items()):
                node_labels = node["metadata"].get("labels", {})
                problems = []
                if any(node_labels.get(k) != v for k, v in selector.items()):
                    problems.append("node(s) didn't match Pod's node affinity/selector")
                else:
                    if cpu > c:
                        problems.append("Insufficient cpu")
                    if mem > m:
                        problems.append("Insufficient memory")
                # Least allocated first, as the default scheduler's scoring spreads pods.
                if not problems and (chosen is None or c > free[chosen][0]):
                    chosen = name
                reasons.update(problems)
            if chosen is not None:
                c, m, node = free[chosen]
                free[chosen] = (c - cpu, m - mem, node)
                self._bind(pod, chosen)
            else:
                self._unschedulable(pod, self._message(len(free), reasons))

    @staticmethod
    def _message(nodes: int, reasons: Counter[str]) -> str:
        if nodes == 0:
            return "no nodes available to schedule pods"
        parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        return f"0/{nodes} nodes are available: {parts}."

    def _bind(self, pod: Obj, node: str) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]

        def bind(p: Obj) -> None:
            p["spec"]["nodeName"] = node
            p["status"]["hostIP"] = "127.0.0.1"
            _set_condition(p, _condition("PodScheduled", True))

        bound = self.store.mutate("pods", ns, name, bind)
        self.record_event(
            bound, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node}"
        )
        uid = bound["metadata"]["uid"]
        self._starting[uid] = self.tasks.start(self._kubelet_start(ns, name, uid), f"start {name}")

    def _unschedulable(self, pod: Obj, message: str) -> None:
        current = next(
            (c for c in pod["status"].get("conditions", []) if c["type"] == "PodScheduled"), None
        )
        if current and current.get("message") == message:
            return  # the real scheduler rate-limits repeats; one event per new reason is enough
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        cond = _condition("PodScheduled", False, "Unschedulable", message)
        pod = self.store.mutate("pods", ns, name, lambda p: _set_condition(p, cond))
        self.record_event(
            pod, "Warning", "FailedScheduling", message, component="default-scheduler"
        )

    def record_event(
        self, pod: Obj, type_: str, reason: str, message: str, component: str = "kubelet"
    ) -> Obj:
        meta = pod["metadata"]
        stamp = now_rfc3339()
        event = {
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "reportingComponent": component,
        }
        return self.store.create("events", meta["namespace"], event)

    # -- the kubelet -------------------------------------------------------------------

    def _allocate_ip(self) -> str:
        ip = self._next_ip
        self._next_ip = _FIRST_POD_IP if ip >= _LAST_POD_IP else ip + 1
        return str(ipaddress.IPv4Address(ip))

    def _current(self, ns: str, name: str, uid: str) -> Obj | None:
        pod = self.store.find("pods", ns, name)
        if pod is None or pod["metadata"]["uid"] != uid or pod["metadata"].get("deletionTimestamp"):
            return None
        return pod

    async def _kubelet_start(self, ns: str, name: str, uid: str) -> None:
        try:
            await asyncio.sleep(self.startup_delay)
            pod = self._current(ns, name, uid)
            if pod is None:
                return
            probe = readiness_probe(pod)
            delay = self.app_delay() if callable(self.app_delay) else self.app_delay
            if self.workload:
                claim_secret = _env_value(pod, ENV_CLAIM_SECRET)
                if delay > 0:
                    # Bound, not listening: a probe is refused until the app starts.
                    ip, sock = self._bind_pod_port(listen=False)
                    self.tasks.start(
                        self._start_app_later(ns, name, uid, sock, claim_secret, delay),
                        f"app {name}",
                    )
                else:
                    ip = await self._serve(name, uid, claim_secret, *self._bind_pod_port())
                    self.app_answered[name] = self.clock.monotonic()
                if self._current(ns, name, uid) is None:  # deleted while we bound the port
                    await self._stop_server(uid)
                    return
            elif delay > 0:
                ip = self._allocate_ip()
                self.tasks.start(self._app_up_later(name, uid, delay), f"app {name}")
            else:
                ip = self._allocate_ip()
                self._app_up.add(uid)
                self.app_answered[name] = self.clock.monotonic()
            self.store.mutate("pods", ns, name, lambda p: self._running(p, ip, probe is None))
            if probe is not None:
                self._probing[uid] = self.tasks.start(
                    self._probe_loop(ns, name, uid, ip, probe), f"probe {name}"
                )
        finally:
            self._starting.pop(uid, None)

    async def _app_up_later(self, name: str, uid: str, delay: float) -> None:
        await self.clock.sleep(delay)
        self._app_up.add(uid)
        self.app_answered[name] = self.clock.monotonic()

    async def _start_app_later(
        self,
        ns: str,
        name: str,
        uid: str,
        sock: socket.socket,
        claim_secret: str | None,
        delay: float,
    ) -> None:
        try:
            await self.clock.sleep(delay)
        except asyncio.CancelledError:
            sock.close()
            raise
        if self._current(ns, name, uid) is None:
            sock.close()  # the pod went meanwhile
            return
        await self._serve(name, uid, claim_secret, "", sock)
        if self._current(ns, name, uid) is None:  # deleted while the app started
            await self._stop_server(uid)
            return
        self.app_answered[name] = self.clock.monotonic()

    @staticmethod
    def _running(pod: Obj, ip: str, ready: bool) -> None:
        stamp = now_rfc3339()
        status = pod["status"]
        status["phase"] = "Running"
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
        status["startTime"] = stamp
        _set_condition(pod, _condition("Initialized", True))
        for type_ in ("ContainersReady", "Ready"):
            reason = None if ready else "ContainersNotReady"
            _set_condition(pod, _condition(type_, ready, reason))
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": stamp}},
            }
            for c in pod["spec"].get("containers", [])
        ]

    # -- the kubelet's readiness probe -------------------------------------------------

    async def _probe_loop(
        self, ns: str, name: str, uid: str, ip: str, probe: ReadinessProbe
    ) -> None:
        """The kubelet's prober for one pod: a tick ``initial_delay`` after the
        container runs, then every ``period``. Without a workload nothing can make a
        Ready pod's app stop answering, so probing stops there (thousands of pods)."""
        try:
            await self.clock.sleep(probe.initial_delay)
            ready, successes, failures = False, 0, 0
            while self._current(ns, name, uid) is not None:
                ok = await self._probe(uid, ip, probe)
                successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
                if not ready and successes >= probe.success_threshold:
                    ready = True
                    self._set_ready(ns, name, uid, True)
                elif ready and failures >= probe.failure_threshold:
                    ready = False
                    self._set_ready(ns, name, uid, False)
                self.probe_ticks.append(ProbeTick(name, self.clock.monotonic(), ok, ready))
                if ready and not self.workload:
                    return
                await self.clock.sleep(probe.period)
        finally:
            self._probing.pop(uid, None)

    async def _probe(self, uid: str, ip: str, probe: ReadinessProbe) -> bool:
        if not self.workload:
            return uid in self._app_up
        if probe.path is None:  # exec, tcpSocket, grpc: the app is up or not
            return uid in self._servers
        if self._http is None:
            self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        try:
            response = await self._http.get(
                f"http://{ip}:{probe.port}{probe.path}",
                headers={"User-Agent": KUBE_PROBE_AGENT},
                timeout=probe.timeout,
            )
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400  # the kubelet's rule

    def _set_ready(self, ns: str, name: str, uid: str, ready: bool) -> None:
        if self._current(ns, name, uid) is None:
            return

        def flip(p: Obj) -> None:
            reason = None if ready else "ContainersNotReady"
            for type_ in ("ContainersReady", "Ready"):
                _set_condition(p, _condition(type_, ready, reason))
            for status in p["status"].get("containerStatuses") or []:
                status["ready"] = ready

        self.store.mutate("pods", ns, name, flip)

    def app_down(self, name: str, namespace: str) -> None:
        """The pod's app stops answering while its container runs (workload only):
        the kubelet's probe fails from its next tick."""
        pod = self.store.get("pods", namespace, name)
        self.tasks.start(self._stop_server(pod["metadata"]["uid"]), f"app down {name}")

    def _bind_pod_port(self, listen: bool = True) -> tuple[str, socket.socket]:
        """The next address whose pod port is free, bound (another kubesim, or anything
        else on this machine, may hold some). Not ``listen``ing yet, the socket is
        bound without SO_REUSEADDR, so that nobody else can bind it meanwhile."""
        for _ in range(_BIND_ATTEMPTS):
            ip = self._allocate_ip()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if listen:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, POD_PORT))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                log.info("pod address %s:%d is taken, skipping it", ip, POD_PORT)
                continue
            if listen:
                sock.listen(128)
            return ip, sock
        raise OSError(errno.EADDRINUSE, f"port {POD_PORT} taken on {_BIND_ATTEMPTS} addresses")

    async def _serve(
        self, name: str, uid: str, claim_secret: str | None, ip: str, sock: socket.socket
    ) -> str:
        import uvicorn

        from ..devsandbox import build_app

        # What the devsandbox process would read from its environment.
        app = build_app(claim_secret or None)
        requests = self.app_requests.setdefault(name, deque(maxlen=_KEPT))

        async def witnessed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                agent = dict(scope["headers"]).get(b"user-agent", b"")
                at = self.clock.monotonic()
                requests.append((scope["path"], agent.decode(errors="replace"), at))
            await app(scope, receive, send)

        config = uvicorn.Config(
            witnessed,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws_ping_interval=None,
            timeout_graceful_shutdown=1,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)  # what serve() would have set up
        # startup()/shutdown() rather than serve(): serve() takes over the process's
        # signal handlers, which is not ours to do for a hundred simulated pods.
        await server.startup(sockets=[sock])
        self._servers[uid] = server
        return ip

    async def _stop_server(self, uid: str) -> None:
        server = self._servers.pop(uid, None)
        if server is not None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await server.shutdown()

    def _stop_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        self._app_up.discard(uid)
        for tasks in (self._starting, self._probing):
            task = tasks.pop(uid, None)
            if task is not None:
                task.cancel()
        if uid in self._servers:
            self.tasks.start(self._stop_server(uid), f"stop {pod['metadata']['name']}")

    # -- deletion and crashes ----------------------------------------------------------

    def delete_pod(self, ns: str, name: str, grace: float | None) -> Obj:
        """Graceful deletion: deletionTimestamp now, gone once the containers stopped.
        A pod never bound to a node, or grace 0, goes at once, as with the real server."""
        pod = self.store.get("pods", ns, name)
        if grace is None:
            grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        if grace <= 0 or not pod["spec"].get("nodeName"):
            self._stop_pod(pod)
            return self.store.delete("pods", ns, name)
        if pod["metadata"].get("deletionTimestamp"):
            return pod

        def mark(p: Obj) -> None:
            p["metadata"]["deletionTimestamp"] = now_rfc3339(time.time() + grace)
            p["metadata"]["deletionGracePeriodSeconds"] = int(grace)

        marked = self.store.mutate("pods", ns, name, mark)
        uid = marked["metadata"]["uid"]
        # The devsandbox stops at once on SIGTERM, so the pod goes long before the grace
        # period ends; termination_delay stands for that short shutdown.
        wait = min(grace, self.termination_delay)
        self.tasks.start(self._finish_delete(ns, name, uid, wait), f"terminate {name}")
        return marked

    def evict_pod(self, ns: str, name: str, grace: float | None) -> Obj:
        """An eviction the API server allowed: the DisruptionTarget condition, then a
        graceful delete (what the Eviction API does once the budget agreed)."""
        cond = _condition("DisruptionTarget", True, "EvictionByEvictionAPI", EVICTION_MESSAGE)
        self.store.mutate("pods", ns, name, lambda p: _set_condition(p, cond))
        return self.delete_pod(ns, name, grace)

    def evict_for_pressure(self, ns: str, name: str, message: str) -> Obj:
        """The kubelet evicts a pod for node pressure or for using more ephemeral storage
        than its limits (no budget is asked): Failed, reason Evicted, its containers
        stopped, the DisruptionTarget condition saying why."""
        pod = self.store.get("pods", ns, name)
        self._stop_pod(pod)
        stamp = now_rfc3339()

        def evict(p: Obj) -> None:
            status = p["status"]
            status["phase"] = "Failed"
            status["reason"] = "Evicted"
            status["message"] = message
            for cs in status.get("containerStatuses") or []:
                cs["ready"] = False
                cs["state"] = {
                    "terminated": {"exitCode": 137, "reason": "Error", "finishedAt": stamp}
                }
            _set_condition(p, _condition("DisruptionTarget", True, "TerminationByKubelet", message))
            _set_condition(p, _condition("Ready", False, "PodFailed"))

        evicted = self.store.mutate("pods", ns, name, evict)
        self.record_event(evicted, "Warning", "Evicted", message)
        return evicted

    async def _finish_delete(self, ns: str, name: str, uid: str, wait: float) -> None:
        await asyncio.sleep(wait)
        pod = self.store.find("pods", ns, name)
        if pod is not None and pod["metadata"]["uid"] == uid:
            self._stop_pod(pod)
            self.store.delete("pods", ns, name)

    def exit_container(self, ns: str, name: str, exit_code: int = 1) -> Obj:
        """The sandbox process dies: Failed with restartPolicy Never, else CrashLoopBackOff."""
        pod = self.store.get("pods", ns, name)
        self._stop_pod(pod)
        never = pod["spec"].get("restartPolicy", "Always") == "Never" or (
            pod["spec"].get("restartPolicy") == "OnFailure" and exit_code == 0
        )
        stamp = now_rfc3339()
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "finishedAt": stamp,
        }

        def crash(p: Obj) -> None:
            statuses = p["status"].get("containerStatuses") or [
                {"name": c["name"], "restartCount": 0} for c in p["spec"].get("containers", [])
            ]
            for status in statuses:
                status["ready"] = False
                status["started"] = False
                if never:
                    status["state"] = {"terminated": terminated}
                else:
                    status["lastState"] = {"terminated": terminated}
                    status["restartCount"] = status.get("restartCount", 0) + 1
                    status["state"] = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off 10s restarting failed container={status['name']}",
                        }
                    }
            p["status"]["containerStatuses"] = statuses
            if never:
                p["status"]["phase"] = "Succeeded" if exit_code == 0 else "Failed"
            _set_condition(p, _condition("ContainersReady", False, "ContainersNotReady"))
            _set_condition(p, _condition("Ready", False, "ContainersNotReady"))

        crashed = self.store.mutate("pods", ns, name, crash)
        if not never:
            self.record_event(crashed, "Warning", "BackOff", "Back-off restarting failed container")
        return crashed

    async def close(self) -> None:
        # All at once: each uvicorn shutdown polls every 0.1 s, so one after another
        # took 30 s for 300 pods, far past a SIGTERM's grace.
        await asyncio.gather(*(self._stop_server(uid) for uid in list(self._servers)))
        if self._http is not None:
            await self._http.aclose()
