"""``sandbox-controller plan``: the capacity arithmetic operators otherwise do by hand.

At peak every editor holds a pod and the warm pool is full on top of that, so the cluster
must fit ``peak editors + prewarm`` sandbox pods, and ``maxTotalJobs`` must allow them.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from .backends.docker_spec import Host
from .cli_parser import ParserExit, ReturningParser, archive_size
from .quantities import parse_quantity

_GIB = Decimal(1024**3)


class PlanError(Exception):
    """Bad input; the message is for the operator."""


def _quantity(text: object) -> Decimal:
    """A Kubernetes quantity (quantities.py), or a PlanError for the operator."""
    if not isinstance(text, str | int | float):
        raise PlanError(f"{text!r} is not a quantity")
    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


@dataclass(frozen=True)
class Plan:
    peak_editors: int
    prewarm: int
    max_total_jobs: int
    cpu_per_pod: Decimal  # cores
    memory_gib_per_pod: Decimal
    pods: int
    cpu: Decimal
    memory_gib: Decimal

    @property
    def over_cap(self) -> bool:
        return self.pods > self.max_total_jobs


def plan(
    peak_editors: int, prewarm: int, max_total_jobs: int, cpu: Decimal, memory_gib: Decimal
) -> Plan:
    pods = peak_editors + prewarm
    return Plan(
        peak_editors=peak_editors,
        prewarm=prewarm,
        max_total_jobs=max_total_jobs,
        cpu_per_pod=cpu,
        memory_gib_per_pod=memory_gib,
        pods=pods,
        cpu=pods * cpu,
        memory_gib=pods * memory_gib,
    )


@dataclass(frozen=True)
class Headroom:
    """Placeholder pods (agentSandbox.headroom.pods) that keep room for the sessions
    arriving while a node is added: each new session takes a warm pod, whose
    replacement takes a placeholder's room at once; the evicted placeholder is what
    makes the autoscaler add a node, and it has until the placeholders run out."""

    arrivals_per_minute: Decimal
    node_add_seconds: int
    pods: int


def headroom(arrivals_per_minute: Decimal, node_add_seconds: int) -> Headroom:
    """Enough placeholders for the new sessions of one node add at the busiest rate."""
    pods = math.ceil(arrivals_per_minute * node_add_seconds / 60)
    return Headroom(arrivals_per_minute, node_add_seconds, pods)


def headroom_lines(p: Plan, h: Headroom) -> str:
    total = p.pods + h.pods
    return "\n".join(
        [
            f"Headroom:             {h.pods} placeholder pods ({_num(h.arrivals_per_minute)} "
            f"new sessions/min x {h.node_add_seconds} s to add a node)",
            f"Helm:                 agentSandbox.headroom.pods: {h.pods}",
            f"Room held at peak:    {total} pods ({p.pods} sandbox + {h.pods} placeholder): "
            f"{_num(total * p.cpu_per_pod)} CPU cores, "
            f"{_num(total * p.memory_gib_per_pod)} GiB",
            "Placeholders are not sandboxes: maxTotalJobs does not count them.",
        ]
    )


def requests_from_template(path: Path) -> tuple[Decimal | None, Decimal | None]:
    """CPU (cores) and memory (GiB) requests of the first container of a pod template.

    Accepts the chart's pod-template.yaml (a Pod), the ConfigMap holding it (as
    ``kubectl get configmap -o yaml`` prints it), or a bare pod spec.
    """
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlanError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"{path} is not YAML: {exc}") from None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
        text = (doc.get("data") or {}).get("pod-template.yaml")
        doc = yaml.safe_load(text) if isinstance(text, str) else None
    spec = doc.get("spec", doc) if isinstance(doc, dict) else None
    if isinstance(spec, dict) and "template" in spec:
        spec = (spec["template"] or {}).get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise PlanError(f"{path} has no containers: expected a Pod or a pod spec")
    requests = (containers[0].get("resources") or {}).get("requests") or {}
    cpu = _quantity(requests["cpu"]) if "cpu" in requests else None
    memory = _quantity(requests["memory"]) / _GIB if "memory" in requests else None
    return cpu, memory


def _num(value: Decimal) -> str:
    """2 -> '2', 0.5 -> '0.5', 1.86264514923 -> '1.86'."""
    return f"{value.quantize(Decimal('0.01')).normalize():f}"


def edge_records(session_domain: str) -> str:
    """What subdomain mode needs outside the cluster: one origin per session means one
    host name per session, so a wildcard DNS record and a wildcard certificate."""
    domain = session_domain.strip().strip(".").lower()
    return "\n".join(
        [
            f"Subdomain mode ({domain}): each session is served at https://<session id>.{domain}/",
            f"DNS:                  *.{domain}  A/AAAA -> the ingress address "
            "(or CNAME -> the load balancer's name)",
            f"TLS:                  a certificate for *.{domain} in the Secret named by "
            "agentSandbox.proxy.ingress.wildcardTlsSecretName",
            f"Helm:                 agentSandbox.proxy.sessionDomain: {domain}",
        ]
    )


def render(p: Plan) -> str:
    lines = [
        f"Sandbox pods at peak: {p.pods} pods ({p.peak_editors} editors + {p.prewarm} warm)",
        f"CPU requests:         {_num(p.cpu)} CPU cores ({_num(p.cpu_per_pod)} per pod)",
        f"Memory requests:      {_num(p.memory_gib)} GiB "
        f"({_num(p.memory_gib_per_pod)} GiB per pod)",
    ]
    if p.over_cap:
        lines += [
            f"maxTotalJobs:         {p.max_total_jobs}",
            "",
            f"WARNING: {p.pods} pods at peak exceed maxTotalJobs ({p.max_total_jobs}). Once "
            f"{p.max_total_jobs} pods exist, new sessions that find no warm pod wait and are "
            "then refused with 503 capacity_exhausted.",
            f"Set agentSandbox.controller.scaling.maxTotalJobs (SANDBOX_MAX_TOTAL_JOBS) to at "
            f"least {p.pods}, and make sure the cluster can fit {_num(p.cpu)} CPU cores and "
            f"{_num(p.memory_gib)} GiB for sandboxes.",
        ]
    else:
        headroom = p.max_total_jobs - p.pods
        lines.append(f"maxTotalJobs:         {p.max_total_jobs} (fits, {headroom} pods to spare)")
    lines.append("These are requests for sandbox pods only; add the controller and proxies.")
    return "\n".join(lines)


def snapshot_store_lines(suspended: int, archive_bytes: int) -> str:
    """What suspended sessions take in the snapshot store: one archive each, of the
    average size. They hold no pod, so they add nothing to the figures above."""
    total = Decimal(suspended * archive_bytes) / _GIB
    size = Decimal(archive_bytes) / Decimal(2**20)
    return "\n".join(
        [
            f"Snapshot store:       {_num(total.quantize(Decimal('0.01')))} GiB "
            f"({suspended} suspended sessions x {_num(size.quantize(Decimal('0.1')))} MiB "
            "average archive)",
            "Suspended sessions hold no pod: they count toward neither the cap nor a user's limit.",
            "Size the PVC (agentSandbox.snapshots.pvc.size) or the bucket above this; "
            "archives past SANDBOX_SNAPSHOT_RETENTION are deleted.",
        ]
    )


def docker_host_lines(p: Plan, host: Host) -> str:
    """The same peak against one Docker host (``plan --docker``): memory is held, so it
    decides how many sandboxes fit; CPU limits only cap each one and may add up past the
    host's cores."""
    memory = int(p.memory_gib_per_pod * _GIB)
    fits = host.capacity(memory)
    per_pod = f"{_num(p.memory_gib_per_pod)} GiB"
    lines = [
        f"Docker host:          {host.cpus} CPUs, {_num(Decimal(host.memory) / _GIB)} GiB memory, "
        f"{_num(Decimal(host.reserved_memory) / _GIB)} GiB of it reserved "
        "(SANDBOX_DOCKER_RESERVED_MEMORY)",
        f"Sandboxes it holds:   {fits} at {per_pod} each (SANDBOX_DOCKER_MEMORY)",
        f"CPU limits at peak:   {_num(p.cpu)} CPU on {host.cpus} cores "
        f"({_num(p.cpu / host.cpus)}x: shared, as a limit, not held)",
    ]
    if p.cpu_per_pod > host.cpus:
        lines += [
            "",
            f"WARNING: a sandbox's CPU limit ({_num(p.cpu_per_pod)}) exceeds the host's "
            f"{host.cpus} CPUs: no sandbox would ever start (Insufficient cpu).",
        ]
    if p.pods > fits:
        lines += [
            "",
            f"WARNING: {p.pods} sandboxes at peak, but this host holds {fits}. Beyond that, "
            'new sandboxes wait unschedulable (capacity_blocked, detail "Insufficient '
            'memory") until one ends. Use a larger VM, smaller sandboxes, or Kubernetes.',
        ]
    if p.max_total_jobs > fits:
        lines.append(
            f"maxTotalJobs ({p.max_total_jobs}) is above what the host holds ({fits}): "
            f"SANDBOX_MAX_TOTAL_JOBS={fits} refuses early with 503 rather than queueing."
        )
    return "\n".join(lines)


def docker_host(url: str | None, reserved_memory: int) -> Host:
    """The host's CPUs and memory, from ``docker info`` (DOCKER_HOST when url is None)."""
    import asyncio

    import aiodocker

    async def info() -> Host:
        async with aiodocker.Docker(url=url) as docker:
            return Host.from_info(await docker.system.info(), reserved_memory)

    try:
        return asyncio.run(info())
    except Exception as exc:  # no daemon, no permission: say so, do not trace
        raise PlanError(f"cannot read docker info: {exc}") from None


def _count(minimum: int) -> Any:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return convert


def _positive_quantity(text: str) -> Decimal:
    try:
        value = _quantity(text)
    except PlanError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return value


def _rate(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _memory_gib(text: str) -> Decimal:
    """A plain number is GiB (``2``, ``1.5``); with a unit it is bytes (``2Gi``, ``2048Mi``)."""
    value = _positive_quantity(text)
    return value if text.strip()[-1:].isdigit() else value / _GIB


def _parser() -> ReturningParser:
    parser = ReturningParser(
        prog="sandbox-controller plan",
        description="Size the sandbox pool for a peak number of concurrent editors.",
        epilog="With --trace FILE instead, plan simulates your own traffic: "
        "see `sandbox-controller plan --trace FILE --help`.",
    )
    parser.add_argument(
        "--peak-editors",
        type=_count(0),
        required=True,
        metavar="N",
        help="editors with an open agent thread at the busiest moment",
    )
    parser.add_argument(
        "--prewarm", type=_count(0), default=5, metavar="N", help="prewarmPoolSize (default 5)"
    )
    parser.add_argument(
        "--max-total-jobs",
        type=_count(1),
        default=50,
        metavar="N",
        help="maxTotalJobs (default 50)",
    )
    parser.add_argument(
        "--cpu",
        type=_positive_quantity,
        default=Decimal(1),
        metavar="Q",
        help="CPU request per sandbox pod, e.g. 1 or 500m (default 1)",
    )
    parser.add_argument(
        "--memory-gib",
        type=_memory_gib,
        default=Decimal(2),
        metavar="GIB",
        help="memory request per sandbox pod in GiB, or a quantity such as 2048Mi (default 2)",
    )
    parser.add_argument(
        "--session-domain",
        metavar="DOMAIN",
        help="subdomain mode's domain (SANDBOX_PROXY_SESSION_DOMAIN): also print the "
        "wildcard DNS record and certificate it needs",
    )
    parser.add_argument(
        "--docker",
        action="store_true",
        help="also check the peak against this Docker host (its CPUs and memory from "
        "docker info; DOCKER_HOST or --docker-url say which daemon)",
    )
    parser.add_argument("--docker-url", metavar="URL", help="e.g. unix:///var/run/docker.sock")
    parser.add_argument(
        "--reserved-memory-gib",
        type=_memory_gib,
        default=Decimal(1),
        metavar="GIB",
        help="memory no sandbox may take (SANDBOX_DOCKER_RESERVED_MEMORY; default 1)",
    )
    parser.add_argument(
        "--arrivals-per-minute",
        type=_rate,
        metavar="R",
        help="new sessions per minute at the busiest moment: also print the headroom "
        "(agentSandbox.headroom.pods) that keeps them off a node add",
    )
    parser.add_argument(
        "--node-add-seconds",
        type=_count(1),
        default=120,
        metavar="S",
        help="how long your autoscaler takes to add a ready node (default 120)",
    )
    parser.add_argument(
        "--suspended-sessions",
        type=_count(0),
        metavar="N",
        help="sessions suspended at once (kept archives, no pods): also print the "
        "snapshot store they take",
    )
    parser.add_argument(
        "--archive-size",
        type=archive_size,
        default=50 * 2**20,
        metavar="SIZE",
        help="average archive of a suspended sandbox, e.g. 200Mi (default 50Mi)",
    )
    parser.add_argument(
        "--template",
        type=Path,
        metavar="FILE",
        help="pod template YAML; its first container's requests win",
    )
    return parser


def main(argv: list[str]) -> int:
    if any(arg == "--trace" or arg.startswith("--trace=") for arg in argv):
        # Sizing from traffic: the simulator (sim/planning.py) answers.
        from .sim.planning import main as plan_from_trace

        return plan_from_trace(argv)
    try:
        args = _parser().parse_args(argv)
    except ParserExit as exc:
        return exc.code
    cpu: Decimal = args.cpu
    memory: Decimal = args.memory_gib
    if args.template is not None:
        try:
            template_cpu, template_memory = requests_from_template(args.template)
        except PlanError as exc:
            print(f"sandbox-controller plan: error: {exc}", file=sys.stderr)
            return 2
        cpu = template_cpu if template_cpu is not None else cpu
        memory = template_memory if template_memory is not None else memory
    result = plan(args.peak_editors, args.prewarm, args.max_total_jobs, cpu, memory)
    print(render(result))
    if args.arrivals_per_minute is not None:
        print()
        print(headroom_lines(result, headroom(args.arrivals_per_minute, args.node_add_seconds)))
    if args.docker:
        try:
            host = docker_host(args.docker_url, int(args.reserved_memory_gib * _GIB))
        except PlanError as exc:
            print(f"sandbox-controller plan: error: {exc}", file=sys.stderr)
            return 2
        print()
        print(docker_host_lines(result, host))
    if args.suspended_sessions is not None:
        print()
        print(snapshot_store_lines(args.suspended_sessions, args.archive_size))
    if args.session_domain:
        print()
        print(edge_records(args.session_domain))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
