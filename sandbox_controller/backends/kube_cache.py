"""What the watch has shown: pods and their latest Warning events, as PodStatus.

Pure state: the backend feeds it list results and watch events, and it answers with
the PodEvents to emit. An event is emitted only when a pod's PodStatus changes, so a
resync that finds nothing new says nothing.

A pod is ready when the kubelet says so (its Ready condition), or when it runs and has
answered our own readiness probe (kube_readiness.py) and the kubelet has not yet said
anything else: ``answered`` marks it, the kubelet's Ready ends the mark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..sandbox_contract import POD_PORT
from .base import PodEvent, PodPhase, PodStatus

Obj = dict[str, Any]


def parse_time(value: str | None) -> float:
    """An RFC 3339 time of the API (UTC, whole seconds) as unix seconds; 0 if none.
    fromisoformat, not strptime: 30x faster, and it runs for every pod listed (10,000
    at a restart) and every watch event."""
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(value[:19]).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return 0.0


# What the cache reads of a pod's metadata: the status functions above and below, and
# the uid and resourceVersion checks of PodCache.
_METADATA_READ = ("name", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp")
_CONDITION_READ = ("type", "status", "reason", "message")
_CONTAINER_READ = ("name", "state")
_STATUS_READ = ("phase", "podIP", "reason", "message")


def slim(pod: Mapping[str, Any]) -> Obj:
    """What the cache keeps of a pod: only the fields it reads. A listed pod's spec,
    annotations, owner references and managedFields were most of its memory (about
    14 KB a pod in Python objects, 140 MiB at 10,000 pods), and every dict of them one
    more object for each full collection to scan. Keys are the literals below, shared by
    every pod, not a copy per pod from the JSON."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    kept_meta: Obj = {key: meta[key] for key in _METADATA_READ if key in meta}
    kept_meta["labels"] = meta.get("labels") or {}
    kept: Obj = {key: status[key] for key in _STATUS_READ if key in status}
    for key in ("conditions", "containerStatuses", "initContainerStatuses"):
        read = _CONDITION_READ if key == "conditions" else _CONTAINER_READ
        if status.get(key):
            kept[key] = [{k: item[k] for k in read if k in item} for item in status[key]]
    return {"metadata": kept_meta, "status": kept}


def resource_version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0  # opaque resourceVersions: every update then counts as newer


def _terminated(cs: Mapping[str, Any]) -> str:
    term = (cs.get("state") or {}).get("terminated") or {}
    return (
        f"container {cs.get('name')} exited with code {term.get('exitCode')}"
        f" ({term.get('reason', 'Error')})"
    )


def _failure(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status") or {}
    for cs in status.get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode") != 0:  # init containers are meant to exit 0
            return _terminated(cs)
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("terminated"):
            return _terminated(cs)
        waiting = state.get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            return f"CrashLoopBackOff: {waiting.get('message', '')}".rstrip(": ")
    if status.get("phase") in ("Failed", "Succeeded"):
        return status.get("message") or status.get("reason") or f"pod {status['phase'].lower()}"
    return None


def eviction(pod: Mapping[str, Any]) -> str | None:
    """Why the pod is being evicted, if it is: the DisruptionTarget condition the Eviction
    API, preemption or the kubelet set (Kubernetes 1.26+), or the kubelet's older
    ``reason: Evicted`` status (node pressure, ephemeral storage over its limits)."""
    status = pod.get("status") or {}
    return _eviction(status, _conditions(status))


def _conditions(status: Mapping[str, Any]) -> dict[Any, Mapping[str, Any]]:
    """The pod's conditions by type (the last of a type, as the API has one of each)."""
    return {c.get("type"): c for c in status.get("conditions") or ()}


def _eviction(status: Mapping[str, Any], conditions: Mapping[Any, Mapping[str, Any]]) -> str | None:
    cond = conditions.get("DisruptionTarget")
    if cond is not None and cond.get("status") == "True":
        reason, message = cond.get("reason"), cond.get("message")
        return f"{reason}: {message}" if reason and message else str(message or reason)
    if status.get("reason") == "Evicted":
        return str(status.get("message") or "Evicted")
    return None


def _waiting(pod: Mapping[str, Any]) -> str | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason:
            message = waiting.get("message")
            return f"{reason}: {message}" if message else str(reason)
    return None


def kubelet_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def running_unready(pod: Mapping[str, Any]) -> str | None:
    """The pod's IP if it runs (every container started) and the kubelet has not
    marked it Ready; None otherwise."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    if (
        status.get("phase") != "Running"
        or not status.get("podIP")
        or (pod.get("metadata") or {}).get("deletionTimestamp")
        or kubelet_ready(pod)
        or not statuses
        or not all((cs.get("state") or {}).get("running") for cs in statuses)
    ):
        return None
    return str(status["podIP"])


def pod_status(
    pod: Mapping[str, Any],
    warning: str | None = None,
    port: int = POD_PORT,
    answered: bool = False,
) -> PodStatus:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    conditions = _conditions(status)  # one pass: this runs for every pod listed
    common: dict[str, Any] = {
        "name": meta.get("name", ""),
        "labels": dict(meta.get("labels") or {}),
        "created_at": parse_time(meta.get("creationTimestamp")),
        "terminating": bool(meta.get("deletionTimestamp")),
        "evicted": _eviction(status, conditions),
    }
    failure = _failure(pod)
    if failure is not None:
        return PodStatus(phase=PodPhase.FAILED, detail=failure, **common)
    ready = conditions.get("Ready", {}).get("status") == "True" or (
        answered and running_unready(pod) is not None
    )
    ip = status.get("podIP")
    if ready and ip:
        return PodStatus(phase=PodPhase.READY, address=f"{ip}:{port}", **common)
    scheduled = conditions.get("PodScheduled") or {}
    if scheduled.get("status") == "False":
        return PodStatus(
            phase=PodPhase.PENDING,
            detail=scheduled.get("message") or scheduled.get("reason"),
            unschedulable=scheduled.get("reason") == "Unschedulable",
            **common,
        )
    return PodStatus(phase=PodPhase.PENDING, detail=_waiting(pod) or warning, **common)


def _event_order(event: Mapping[str, Any]) -> tuple[float, int]:
    stamp = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
    )
    return parse_time(stamp), resource_version(event)


class PodCache:
    def __init__(self, port: int = POD_PORT) -> None:
        self.port = port
        self._pods: dict[str, Obj] = {}
        self._status: dict[str, PodStatus] = {}
        self._warnings: dict[str, tuple[tuple[float, int], str]] = {}
        self._answered: set[str] = set()  # ready by our probe, not yet by the kubelet

    def __contains__(self, name: object) -> bool:
        return name in self._pods

    def __len__(self) -> int:
        return len(self._pods)

    def statuses(self) -> list[PodStatus]:
        return list(self._status.values())

    def raw(self, name: str) -> Obj | None:
        return self._pods.get(name)

    def is_answered(self, name: str) -> bool:
        return name in self._answered

    def answered(self, name: str) -> PodEvent | None:
        """``name`` answered our readiness probe: ready, while it runs, until the
        kubelet says otherwise."""
        if name not in self._pods:
            return None
        self._answered.add(name)
        return self._refresh(name)

    def unanswered(self, name: str) -> PodEvent | None:
        """Our probe's answer no longer counts (the kubelet never confirmed it)."""
        self._answered.discard(name)
        return self._refresh(name) if name in self._pods else None

    def _refresh(self, name: str) -> PodEvent | None:
        pod = self._pods[name]
        warning = self._warnings.get(name)
        if name in self._answered and kubelet_ready(pod):
            self._answered.discard(name)  # the kubelet agrees: its word from now on
        answered = name in self._answered
        new = pod_status(pod, warning[1] if warning else None, self.port, answered)
        if self._status.get(name) == new:
            return None
        self._status[name] = new
        return PodEvent(new)

    def upsert(self, pod: Obj) -> PodEvent | None:
        name = pod["metadata"]["name"]
        old = self._pods.get(name)
        same_pod = old is not None and old["metadata"].get("uid") == pod["metadata"].get("uid")
        if same_pod and old is not None and resource_version(old) > resource_version(pod):
            return None  # an older view than ours (a create response raced the watch)
        self._pods[name] = slim(pod)
        return self._refresh(name)

    def remove(self, name: str, final: Obj | None = None) -> PodEvent | None:
        """The pod is gone. ``final``: its last state as the watch's DELETED event
        showed it, which may say more than the cache knew (an eviction, say)."""
        pod = self._pods.pop(name, None)
        warning = self._warnings.pop(name, None)
        self._answered.discard(name)
        status = self._status.pop(name, None)
        if pod is None or status is None:
            return None
        if final is not None and final["metadata"].get("uid") == pod["metadata"].get("uid"):
            status = pod_status(final, warning[1] if warning else None, self.port)
        return PodEvent(status, deleted=True)

    def replace(self, pods: Iterable[Obj], keep: Callable[[Obj], bool]) -> list[PodEvent]:
        """A relist: upserts for what changed, deletions for what is gone, except pods
        ``keep`` vouches for (created after the list was taken)."""
        events: list[PodEvent] = []
        seen: set[str] = set()
        for pod in pods:
            seen.add(pod["metadata"]["name"])
            event = self.upsert(pod)
            if event is not None:
                events.append(event)
        for name in [n for n in self._pods if n not in seen]:
            if keep(self._pods[name]):
                continue
            event = self.remove(name)
            if event is not None:
                events.append(event)
        return events

    def warn(self, event: Mapping[str, Any]) -> PodEvent | None:
        if event.get("type") != "Warning":
            return None
        involved = event.get("involvedObject") or {}
        name = involved.get("name")
        if involved.get("kind") != "Pod" or not name:
            return None
        pod = self._pods.get(name)
        if pod is not None and involved.get("uid") not in (None, pod["metadata"].get("uid")):
            return None  # about an earlier pod of the same name
        order = _event_order(event)
        current = self._warnings.get(name)
        if current is not None and current[0] > order:
            return None
        self._warnings[name] = (order, str(event.get("message", "")))
        return self._refresh(name) if pod is not None else None

    def replace_warnings(self, events: Iterable[Mapping[str, Any]]) -> list[PodEvent]:
        """A relist of Warning events: the pods whose status they change. Only pods
        a warning names, or named before, are looked at again: a refresh of every pod
        was a second pass over all 10,000 at each start."""
        before = set(self._warnings)
        self._warnings.clear()
        changed: dict[str, PodEvent] = {}
        for event in events:
            pod_event = self.warn(event)
            if pod_event is not None:
                changed[pod_event.pod.name] = pod_event
        for name in before - self._warnings.keys():  # a warning no longer listed
            pod_event = self._refresh(name) if name in self._pods else None
            if pod_event is not None:
                changed[name] = pod_event
        return list(changed.values())
