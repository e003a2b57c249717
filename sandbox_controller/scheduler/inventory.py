"""Every pod the pool knows, indexed the ways its decisions ask about them.

The indexes (count per state, idle pods oldest first, idle pods of an old template,
pending pods no node can take) change with each pod, never by scanning: at thousands
of pods a scan per scheduler round was the claim path's largest cost. Bookkeeping
only; what to do with the pods is decided by the policies (lifecycle.py above all).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Mapping

from ..model import DEFAULT_TEMPLATE, Pod, PodState, Shape


class PodInventory:
    def __init__(self, template_hash: str, hashes: Mapping[str, str] | None = None) -> None:
        # The hash in force of each template; the first is the default's.
        self.hashes: dict[str, str] = dict(hashes or {DEFAULT_TEMPLATE: template_hash})
        self.template_hash = next(iter(self.hashes.values()))
        self.pods: dict[str, Pod] = {}
        self.counts: dict[PodState, int] = {s: 0 for s in PodState}
        # The same, per shape (each warm pool's share; GET /pool's templates).
        self.shape_counts: defaultdict[Shape, dict[PodState, int]] = defaultdict(
            lambda: {s: 0 for s in PodState}
        )
        self.idle: OrderedDict[str, None] = OrderedDict()  # ready pool pods, oldest first
        # Fresh idle pods by shape, oldest first: what a session of that shape is handed.
        self.idle_by_shape: defaultdict[Shape, OrderedDict[str, None]] = defaultdict(OrderedDict)
        self.stale_idle: set[str] = set()  # idle pods of an old template
        self.unschedulable: set[str] = set()  # pending pods no node can take

    def __len__(self) -> int:
        return len(self.pods)

    def add(self, pod: Pod) -> None:
        self.pods[pod.name] = pod
        self.counts[pod.state] += 1
        self.shape_counts[pod.shape][pod.state] += 1
        self._enter(pod)

    def remove(self, pod: Pod) -> None:
        del self.pods[pod.name]
        self.counts[pod.state] -= 1
        self.shape_counts[pod.shape][pod.state] -= 1
        self._leave(pod)

    def set_state(self, pod: Pod, state: PodState) -> None:
        self.counts[pod.state] -= 1
        self.counts[state] += 1
        per_template = self.shape_counts[pod.shape]
        per_template[pod.state] -= 1
        per_template[state] += 1
        self._leave(pod)
        pod.state = state
        self._enter(pod)

    def set_unschedulable(self, pod: Pod, unschedulable: bool) -> None:
        """What the platform says of a pending pod: can any node take it?"""
        pod.unschedulable = unschedulable
        if unschedulable and pod.state is PodState.PENDING:
            self.unschedulable.add(pod.name)
        else:
            self.unschedulable.discard(pod.name)

    def template_counts(self, template: str) -> dict[PodState, int]:
        counts = {s: 0 for s in PodState}
        for shape, shape_counts in self.shape_counts.items():
            if shape.template == template:
                for state, n in shape_counts.items():
                    counts[state] += n
        return counts

    def fresh(self, pod: Pod) -> bool:
        """Made from its template as it is now (a known template, the same hash)."""
        return self.hashes.get(pod.template) == pod.template_hash

    def oldest_fresh_idle(self, shape: Shape | None = None) -> Pod | None:
        """The idle pod to hand out next: the oldest of the shape's template as it is
        now, in that shape (None: the default template's own)."""
        wanted = shape or Shape(next(iter(self.hashes)))
        idle = self.idle_by_shape.get(wanted)
        return self.pods[next(iter(idle))] if idle else None

    def _enter(self, pod: Pod) -> None:
        if pod.state is PodState.IDLE:
            self.idle[pod.name] = None
            if self.fresh(pod):
                self.idle_by_shape[pod.shape][pod.name] = None
            else:
                self.stale_idle.add(pod.name)
        elif pod.state is PodState.PENDING and pod.unschedulable:
            self.unschedulable.add(pod.name)

    def _leave(self, pod: Pod) -> None:
        if pod.state is PodState.IDLE:
            self.idle.pop(pod.name, None)
            self.stale_idle.discard(pod.name)
            by_shape = self.idle_by_shape.get(pod.shape)
            if by_shape is not None:
                by_shape.pop(pod.name, None)
                if not by_shape:
                    del self.idle_by_shape[pod.shape]
        self.unschedulable.discard(pod.name)
