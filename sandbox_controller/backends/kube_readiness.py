"""Readiness seen directly: while a session waits for a cold pod, the backend probes
the pod's readiness endpoint itself, every ``interval`` (SANDBOX_KUBE_READINESS_INTERVAL,
50 ms) from the moment its container runs, and reports it ready at the first answer,
rather than at the kubelet's next probe (up to one probe period later: 2 s in the chart).
The answer is seen half an interval after the app answers on average, a whole one at
worst, so the interval is most of a cold claim's overhead (benchmarks/README.md §12).

The probe is the pod template's own (the first container's ``readinessProbe.httpGet``:
its path, port and headers), so a pod is taken as ready by the answer the kubelet
would take. Pods are probed only while sessions wait; the rest are left to the
kubelet. At most PROBE_CONCURRENCY probes are in flight at once, and at most PROBE_RATE
are sent a second, all pods together (with more pods than that allows at ``interval``,
each is probed less often). Until a pod's port takes a connection, a probe is a bare
TCP connect (``accepts``): an app still starting costs a quarter of a refused HTTP probe.

The kubelet stays the authority: a pod reported ready on our probe alone must be
confirmed by its Ready condition within ``confirm_within`` (the template's probe
timing, and a margin); if it is not, it is reported not ready again, which the
scheduler handles as any pod that stops being ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..aiotasks import TaskGroup
from ..clock import Clock
from .probing import accepts, probe

log = logging.getLogger(__name__)

PROBE_CONCURRENCY = 16
# Probes a second, all pods together: an HTTP probe costs the controller 0.8-1.7 ms of
# CPU (benchmarks/probe_cost.py; a bare connect 0.1-0.16 ms), so this bounds
# probing at a fifth to a third of a core however many pods start while sessions
# wait; up to 10 pods get the 50 ms default.
PROBE_RATE = 200
# The kubelet's rule for an httpGet probe: 2xx and 3xx are success.
KUBELET_ACCEPTS = range(200, 400)
# Added to the template's probe timing before an answer the kubelet has not confirmed
# is taken back: its status update may take a while to reach the watch.
CONFIRM_MARGIN = 10.0
# What Kubernetes assumes for fields a probe leaves out.
_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
}


@dataclass(frozen=True)
class ProbeTarget:
    """Where and how the template's readiness probe asks: ``http://{ip}:{port}{path}``."""

    path: str
    port: int
    headers: Mapping[str, str]
    timeout: float  # the probe's timeoutSeconds
    confirm_within: float  # seconds the kubelet has to agree with an answer of ours

    def url(self, ip: str) -> str:
        return f"http://{ip}:{self.port}{self.path}"


def _seconds(spec: Mapping[str, Any], key: str) -> float:
    value = spec.get(key, _DEFAULTS[key])
    return float(value) if isinstance(value, int | float) and value >= 0 else _DEFAULTS[key]


def _port(value: Any, container: Mapping[str, Any]) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    for port in container.get("ports") or []:
        if port.get("name") == value and isinstance(port.get("containerPort"), int):
            return int(port["containerPort"])
    return None


def probe_target(template: Mapping[str, Any]) -> ProbeTarget | None:
    """The template's readiness probe, if we can ask it as the kubelet would: a plain
    HTTP GET of the pod's own address. A template without a readiness probe has its
    pods Ready as soon as they run; an exec, tcpSocket or grpc probe, HTTPS, or a
    ``host`` of its own are left to the kubelet."""
    for container in template.get("spec", {}).get("containers", []):
        spec = container.get("readinessProbe")
        if not isinstance(spec, Mapping):
            continue
        http = spec.get("httpGet")
        if not isinstance(http, Mapping) or http.get("host"):
            return None
        if str(http.get("scheme", "HTTP")).upper() != "HTTP":
            return None
        port = _port(http.get("port"), container)
        if port is None:
            return None
        path = str(http.get("path") or "/")
        headers = {
            str(h["name"]): str(h.get("value", ""))
            for h in http.get("httpHeaders") or []
            if isinstance(h, Mapping) and h.get("name")
        }
        period = max(1.0, _seconds(spec, "periodSeconds"))
        timeout = max(1.0, _seconds(spec, "timeoutSeconds"))
        confirm = (
            _seconds(spec, "initialDelaySeconds")
            + period * (max(1.0, _seconds(spec, "successThreshold")) + 1)
            + timeout
            + CONFIRM_MARGIN
        )
        return ProbeTarget(
            path if path.startswith("/") else f"/{path}", port, headers, timeout, confirm
        )
    return None


class DirectReadiness:
    """The probes of pods that run but are not Ready yet, while sessions wait.

    The backend tells it which pods run unready (``unready``) and which no longer do
    (``settled``), and how many sessions wait (``set_waiting``); it calls ``answered``
    at a pod's first answer, and ``unconfirmed`` when the kubelet has not agreed
    within the target's ``confirm_within``."""

    def __init__(
        self,
        target: ProbeTarget,
        *,
        clock: Clock,
        answered: Callable[[str], None],
        unconfirmed: Callable[[str], None],
        interval: float = 0.05,
        concurrency: int = PROBE_CONCURRENCY,
        rate: float = PROBE_RATE,
    ) -> None:
        self.target = target
        self.clock = clock
        self._answered = answered
        self._unconfirmed = unconfirmed
        self.interval = interval
        self.rate = rate
        self._slots = asyncio.Semaphore(concurrency)
        self._unready: dict[str, str] = {}  # pod name -> its IP
        self._probing: dict[str, asyncio.Task[Any]] = {}
        self._confirming: dict[str, asyncio.Task[Any]] = {}
        # Answered but never confirmed by the kubelet: not probed again (it would only
        # flap) until the kubelet speaks or the pod goes.
        self._distrusted: set[str] = set()
        # Pods whose port took a connection: probed over HTTP from then on.
        self._listening: set[str] = set()
        self._waiting = 0
        self._tasks = TaskGroup("direct-readiness")
        # No proxy from the environment: a pod's address is reached directly.
        self._http: httpx.AsyncClient | None = None

    def set_waiting(self, count: int) -> None:
        self._waiting = count
        if count > 0:
            for name in list(self._unready):
                self._start(name)
        else:
            for task in self._probing.values():
                task.cancel()
            self._probing.clear()

    def unready(self, name: str, ip: str) -> None:
        """``name`` runs at ``ip`` and is not Ready (by the kubelet or by us) yet."""
        self._unready[name] = ip
        if self._waiting > 0:
            self._start(name)

    def settled(self, name: str, *, confirmed: bool = True) -> None:
        """``name`` is Ready, failed, terminating or gone: no more probes. With
        ``confirmed`` (the kubelet said Ready, or the pod is gone) no confirmation is
        awaited either."""
        self._unready.pop(name, None)
        self._listening.discard(name)
        task = self._probing.pop(name, None)
        if task is not None:
            task.cancel()
        if confirmed:
            self._distrusted.discard(name)
            waiting = self._confirming.pop(name, None)
            if waiting is not None:
                waiting.cancel()

    def _start(self, name: str) -> None:
        if name not in self._probing | self._confirming.keys() | self._distrusted:
            self._probing[name] = self._tasks.start(self._probe(name), f"probe {name}")

    async def _probe(self, name: str) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(trust_env=False)
        while name in self._unready:
            started = self.clock.monotonic()
            async with self._slots:
                ip = self._unready.get(name)
                ok = ip is not None and await self._ask(name, ip, self._http)
            if ok and self._probing.get(name) is asyncio.current_task():
                del self._probing[name]
                self._unready.pop(name, None)
                self._confirming[name] = self._tasks.start(self._confirm(name), f"confirm {name}")
                self._answered(name)
                return
            # One probe per period, however long this one took to be refused.
            await self.clock.sleep(self.period() - (self.clock.monotonic() - started))

    def period(self) -> float:
        """Between two probes of one pod: ``interval``, or longer when probing every
        pod that often would send more than ``rate`` probes a second."""
        return max(self.interval, len(self._probing) / self.rate)

    async def _ask(self, name: str, ip: str, http: httpx.AsyncClient) -> bool:
        """One probe: the template's HTTP GET, after a bare connect until the pod's
        port takes one (an app that does not listen yet refuses it at a quarter of the
        cost)."""
        if name not in self._listening:
            if not await accepts(ip, self.target.port, timeout=self.target.timeout):
                return False
            self._listening.add(name)
        return await probe(
            http,
            self.target.url(ip),
            accept=KUBELET_ACCEPTS,
            timeout=self.target.timeout,
            headers=self.target.headers,
        )

    async def _confirm(self, name: str) -> None:
        await self.clock.sleep(self.target.confirm_within)
        if self._confirming.pop(name, None) is not None:
            self._distrusted.add(name)
            log.warning(
                "pod %s answered its readiness probe but the kubelet has not marked it "
                "Ready within %.0fs: taken as not ready",
                name,
                self.target.confirm_within,
            )
            self._unconfirmed(name)

    async def stop(self) -> None:
        self._waiting = 0
        self._unready.clear()
        self._probing.clear()
        self._confirming.clear()
        self._distrusted.clear()
        self._listening.clear()
        await self._tasks.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
