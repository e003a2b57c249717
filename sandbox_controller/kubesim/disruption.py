"""Voluntary disruption: PodDisruptionBudgets and the Eviction API, as a drain meets them.

``POST .../pods/{name}/eviction`` is what ``kubectl drain``, the cluster-autoscaler and
Karpenter send. The API server allows it when no budget covers the pod, when the pod is
not running (pending, succeeded, failed: its loss costs no availability), when it is
already being deleted, or when its one budget can spare a healthy pod; two budgets over
one pod are a 500, and a budget with no room is a 429 the drain retries. An allowed
eviction marks the pod with the ``DisruptionTarget`` condition and deletes it gracefully.

The disruption controller's arithmetic is done live here, when asked, rather than
written into each budget's status on every pod change: ``status()`` is what a real
budget's status would say once that controller caught up. Only an integer
``minAvailable`` or ``maxUnavailable`` is understood: a budget over pods without a
controller (bare pods, as the sandboxes are) accepts nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .selectors import Matcher, label_matcher
from .store import ApiError, Obj, Store

EVICTION_MESSAGE = "Eviction API: evicting"


def selector_matcher(selector: Mapping[str, Any] | None) -> Matcher:
    """A metav1.LabelSelector (matchLabels, matchExpressions) as a matcher. An empty
    selector of a policy/v1 budget selects every pod in its namespace."""
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op in ("In", "NotIn"):
            terms.append(f"{key} {op.lower()} ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise ApiError(422, "Invalid", f"unknown selector operator {op!r}")
    return label_matcher(",".join(terms))


def _healthy(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _integer(value: object, name: str) -> int:
    if isinstance(value, int):
        return value
    raise ApiError(
        500,
        "InternalError",
        f"{name} {value!r}: a budget over pods without a controller takes an integer only",
    )


class Disruption:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _covered(self, budget: Obj) -> list[Obj]:
        match = selector_matcher(budget.get("spec", {}).get("selector"))
        namespace = budget["metadata"]["namespace"]
        return self.store.query("pods", namespace, match)

    def status(self, budget: Obj) -> Obj:
        """The budget's status as the disruption controller would have written it."""
        spec = budget.get("spec") or {}
        pods = self._covered(budget)
        healthy = sum(1 for p in pods if _healthy(p))
        expected = sum(1 for p in pods if not p["metadata"].get("deletionTimestamp"))
        if spec.get("minAvailable") is not None:
            desired = _integer(spec["minAvailable"], "minAvailable")
        elif spec.get("maxUnavailable") is not None:
            desired = max(0, expected - _integer(spec["maxUnavailable"], "maxUnavailable"))
        else:
            desired = expected  # neither: no disruption allowed (maxUnavailable 0)
        return {
            "observedGeneration": budget["metadata"].get("generation", 1),
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": max(0, healthy - desired),
        }

    def with_status(self, budget: Obj) -> Obj:
        return {**budget, "status": self.status(budget)}

    def check(self, pod: Obj) -> None:
        """Raise the API server's refusal if evicting ``pod`` now would break a budget."""
        if pod["metadata"].get("deletionTimestamp"):
            return
        if pod.get("status", {}).get("phase") in ("Pending", "Succeeded", "Failed"):
            return
        namespace = pod["metadata"]["namespace"]
        budgets = [
            b
            for b in self.store.query("poddisruptionbudgets", namespace, lambda o: True)
            if selector_matcher(b.get("spec", {}).get("selector"))(pod)
        ]
        if not budgets:
            return
        if len(budgets) > 1:
            raise ApiError(
                500,
                "InternalError",
                "This pod has more than one PodDisruptionBudget, which the eviction "
                "subresource does not support.",
            )
        budget = budgets[0]
        policy = budget.get("spec", {}).get("unhealthyPodEvictionPolicy")
        if policy == "AlwaysAllow" and not _healthy(pod):
            return
        status = self.status(budget)
        if status["disruptionsAllowed"] > 0:
            return
        name = budget["metadata"]["name"]
        raise ApiError(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
            details={
                "causes": [
                    {
                        "reason": "DisruptionBudget",
                        "message": f"The disruption budget {name} needs "
                        f"{status['desiredHealthy']} healthy pods and has "
                        f"{status['currentHealthy']} currently",
                    }
                ]
            },
        )
