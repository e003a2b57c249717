"""Pod -> PodStatus, and the cache's diffs, on hand-written objects."""

from __future__ import annotations

from typing import Any

from sandbox_controller.backends.base import PodPhase
from sandbox_controller.backends.kube_cache import PodCache, pod_status


def pod(name: str = "p", rv: int = 10, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": str(rv),
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "labels": {"a": "b"},
        },
        "status": status,
    }


def cond(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, str]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
    }


def test_ready() -> None:
    s = pod_status(pod(podIP="127.1.0.9", phase="Running", conditions=[cond("Ready", True)]))
    assert (s.phase, s.address, s.created_at) == (PodPhase.READY, "127.1.0.9:8080", 1704067200.0)


def test_unschedulable() -> None:
    msg = "0/3 nodes are available: 3 Insufficient cpu."
    s = pod_status(pod(conditions=[cond("PodScheduled", False, "Unschedulable", msg)]))
    assert (s.phase, s.detail, s.unschedulable) == (PodPhase.PENDING, msg, True)


def test_waiting_reason_then_warning() -> None:
    waiting = {"name": "c", "state": {"waiting": {"reason": "ErrImagePull", "message": "nope"}}}
    s = pod_status(pod(containerStatuses=[waiting]), warning="older warning")
    assert (s.phase, s.detail) == (PodPhase.PENDING, "ErrImagePull: nope")
    assert pod_status(pod(), warning="Back-off pulling").detail == "Back-off pulling"


def test_failed_forms() -> None:
    term = {"name": "c", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    crash = {"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    assert pod_status(pod(phase="Failed")).phase is PodPhase.FAILED
    assert pod_status(pod(phase="Running", containerStatuses=[term])).phase is PodPhase.FAILED
    assert pod_status(pod(phase="Running", containerStatuses=[crash])).phase is PodPhase.FAILED
    assert "exited with code 1" in (pod_status(pod(containerStatuses=[term])).detail or "")


def test_terminating_is_not_failed() -> None:
    p = pod(podIP="127.1.0.9", conditions=[cond("Ready", True)])
    p["metadata"]["deletionTimestamp"] = "2024-01-01T00:01:00Z"
    s = pod_status(p)
    assert s.terminating and s.phase is PodPhase.READY


def test_cache_emits_changes_only_and_ignores_stale() -> None:
    cache = PodCache()
    assert cache.upsert(pod(rv=10)) is not None
    assert cache.upsert(pod(rv=10)) is None  # same status: nothing to say
    assert cache.upsert(pod(rv=9, phase="Failed")) is None  # older than what we hold
    event = cache.upsert(pod(rv=11, phase="Failed"))
    assert event is not None and event.pod.phase is PodPhase.FAILED


def test_replace_diff() -> None:
    cache = PodCache()
    for name in ("keep", "change", "gone", "mine"):
        cache.upsert(pod(name))
    listed = [pod("keep"), pod("change", rv=12, phase="Failed"), pod("new")]
    events = cache.replace(listed, keep=lambda p: p["metadata"]["name"] == "mine")
    summary = sorted((e.pod.name, e.pod.phase.value, e.deleted) for e in events)
    assert summary == [
        ("change", "failed", False),
        ("gone", "pending", True),
        ("new", "pending", False),
    ]
    assert sorted(s.name for s in cache.statuses()) == ["change", "keep", "mine", "new"]


def test_warning_event_becomes_detail() -> None:
    cache = PodCache()
    cache.upsert(pod("p"))
    event = {
        "type": "Warning",
        "message": "Failed to pull image",
        "involvedObject": {"kind": "Pod", "name": "p", "uid": "uid-p"},
        "lastTimestamp": "2024-01-01T00:00:05Z",
    }
    out = cache.warn(event)
    assert out is not None and out.pod.detail == "Failed to pull image"
    older = {**event, "message": "old", "lastTimestamp": "2024-01-01T00:00:01Z"}
    assert cache.warn(older) is None
    other = {**event, "involvedObject": {"kind": "Pod", "name": "p", "uid": "uid-old"}}
    assert cache.warn(other) is None


def test_a_relist_of_warnings_tells_the_pods_whose_detail_changed_and_no_others() -> None:
    cache = PodCache()
    for name in ("quiet", "was-warned", "newly-warned"):
        cache.upsert(pod(name))

    def warning(name: str, message: str) -> dict[str, Any]:
        involved = {"kind": "Pod", "name": name, "uid": f"uid-{name}"}
        stamp = "2024-01-01T00:00:05Z"
        return {
            "type": "Warning",
            "message": message,
            "involvedObject": involved,
            "lastTimestamp": stamp,
        }

    cache.warn(warning("was-warned", "Back-off pulling image"))
    out = cache.replace_warnings([warning("newly-warned", "FailedScheduling")])
    details = {e.pod.name: e.pod.detail for e in out}
    assert details == {"was-warned": None, "newly-warned": "FailedScheduling"}
    assert cache.replace_warnings([warning("newly-warned", "FailedScheduling")]) == []


def test_evictions_are_told_from_failures() -> None:
    drain = pod(
        podIP="127.1.0.9",
        conditions=[
            cond("Ready", True),
            cond("DisruptionTarget", True, "EvictionByEvictionAPI", "Eviction API: evicting"),
        ],
    )
    drain["metadata"]["deletionTimestamp"] = "2024-01-01T00:01:00Z"
    s = pod_status(drain)
    assert s.terminating and s.evicted == "EvictionByEvictionAPI: Eviction API: evicting"
    disk = "Pod ephemeral local storage usage exceeds the total limit of containers 22Gi."
    kubelet = pod_status(pod(phase="Failed", reason="Evicted", message=disk))
    assert (kubelet.phase, kubelet.evicted) == (PodPhase.FAILED, disk)
    assert pod_status(pod(phase="Failed")).evicted is None
    assert pod_status(pod(conditions=[cond("DisruptionTarget", False, "x", "y")])).evicted is None


def test_a_deletion_shows_the_pods_last_state() -> None:
    cache = PodCache()
    cache.upsert(pod(podIP="127.1.0.9", conditions=[cond("Ready", True)]))
    final = pod(rv=12, conditions=[cond("DisruptionTarget", True, "DeletionByTaintManager", "x")])
    event = cache.remove("p", final)
    assert event is not None and event.deleted and event.pod.evicted == "DeletionByTaintManager: x"
