"""Every pod the pool knows, indexed the ways its decisions ask about them.

The indexes (count per state, idle pods oldest first, idle pods of an old template,
pending pods no node can take) change with each pod, never by scanning: at thousands
of pods a scan per scheduler round was the claim path's largest cost. Bookkeeping
only; what to do with the pods is decided by the policies (lifecycle.py above all).
"""

from __future__ import annotations

from collections import OrderedDict

from ..model import Pod, PodState


class PodInventory:
    def __init__(self, template_hash: str) -> None:
        self.template_hash = template_hash
        self.pods: dict[str, Pod] = {}
        self.counts: dict[PodState, int] = {s: 0 for s in PodState}
        self.idle: OrderedDict[str, None] = OrderedDict()  # ready pool pods, oldest first
        self.stale_idle: set[str] = set()  # idle pods of an old template
        self.unschedulable: set[str] = set()  # pending pods no node can take

    def __len__(self) -> int:
        return len(self.pods)

    def add(self, pod: Pod) -> None:
        self.pods[pod.name] = pod
        self.counts[pod.state] += 1
        self._enter(pod)

    def remove(self, pod: Pod) -> None:
        del self.pods[pod.name]
        self.counts[pod.state] -= 1
        self._leave(pod)

    def set_state(self, pod: Pod, state: PodState) -> None:
        self.counts[pod.state] -= 1
        self.counts[state] += 1
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

    def oldest_fresh_idle(self) -> Pod | None:
        """The idle pod to hand out next: the oldest of the current template."""
        for name in self.idle:
            pod = self.pods[name]
            if pod.template_hash == self.template_hash:
                return pod
        return None

    def _enter(self, pod: Pod) -> None:
        if pod.state is PodState.IDLE:
            self.idle[pod.name] = None
            if pod.template_hash != self.template_hash:
                self.stale_idle.add(pod.name)
        elif pod.state is PodState.PENDING and pod.unschedulable:
            self.unschedulable.add(pod.name)

    def _leave(self, pod: Pod) -> None:
        if pod.state is PodState.IDLE:
            self.idle.pop(pod.name, None)
            self.stale_idle.discard(pod.name)
        self.unschedulable.discard(pod.name)
