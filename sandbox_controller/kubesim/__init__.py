"""A fake Kubernetes API server for tests and benchmarks (see DESIGN.md, "kubesim").

It speaks the real core/v1 REST and watch protocol on 127.0.0.1, so the real
kubernetes-asyncio client and kubectl talk to it unmodified, and it simulates a
scheduler, a kubelet and faults behind that protocol.

In a test::

    async with KubeSim(kubeconfig=tmp_path / "kubeconfig", startup_delay=0.05) as sim:
        ...  # point kubernetes-asyncio or kubectl at sim.kubeconfig_path
        sim.set_faults(error_rate=0.2, cut_watches_every=1.0)
        sim.add_node("big", cpu="8"); sim.remove_node("kubesim-node-0")
        sim.exit_container(pod_name); sim.compact(); sim.cut_watches()
        assert sim.count_calls("create", "pods", 201) == 5 and sim.max_pods_seen <= 5

Out of process: ``python -m sandbox_controller.kubesim --port 0 --kubeconfig PATH``
prints ``{"url": ..., "kubeconfig": ...}`` and takes ``POST /_kubesim/faults``,
``/_kubesim/cut-watches``, ``/_kubesim/compact``, ``/_kubesim/nodes``,
``DELETE /_kubesim/nodes/{name}``, ``POST /_kubesim/pods/{name}/exit``; ``GET
/_kubesim/stats`` and ``/_kubesim/calls`` tell what happened.
"""

from .faults import CallRecord, Faults
from .sim import KubeSim, write_kubeconfig

__all__ = ["CallRecord", "Faults", "KubeSim", "write_kubeconfig"]
