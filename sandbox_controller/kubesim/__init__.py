"""A fake Kubernetes API server for tests and benchmarks (see DESIGN.md, "kubesim").

It speaks the real core/v1 REST and watch protocol on 127.0.0.1, so the real
kubernetes-asyncio client and kubectl talk to it unmodified, and it simulates a
scheduler, a kubelet and faults behind that protocol.
"""

from .faults import CallRecord, Faults
from .sim import KubeSim, write_kubeconfig

__all__ = ["CallRecord", "Faults", "KubeSim", "write_kubeconfig"]
