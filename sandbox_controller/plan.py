"""``sandbox-controller plan``: the capacity arithmetic operators otherwise do by hand.

At peak every editor holds a pod and the warm pool is full on top of that, so the cluster
must fit ``peak editors + prewarm`` sandbox pods, and ``maxTotalJobs`` must allow them.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NoReturn

import yaml

_GIB = Decimal(1024**3)
_SUFFIXES: dict[str, Decimal] = {
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
    **{s: Decimal(1000**i) for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
    "m": Decimal("0.001"),
    "": Decimal(1),
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


class PlanError(Exception):
    """Bad input; the message is for the operator."""


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity (``500m``, ``2Gi``, ``2048Mi``, ``1.5``) as a plain number."""
    if isinstance(text, bool):
        raise PlanError(f"{text!r} is not a quantity")
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise PlanError(f"{text!r} is not a quantity such as 500m, 2, 2Gi or 2048Mi")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise PlanError(f"{text!r} is not a quantity") from None
    return value * _SUFFIXES[suffix]


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
    cpu = parse_quantity(requests["cpu"]) if "cpu" in requests else None
    memory = parse_quantity(requests["memory"]) / _GIB if "memory" in requests else None
    return cpu, memory


def _num(value: Decimal) -> str:
    """2 -> '2', 0.5 -> '0.5', 1.86264514923 -> '1.86'."""
    return f"{value.quantize(Decimal('0.01')).normalize():f}"


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


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Parser(argparse.ArgumentParser):
    # argparse calls sys.exit on bad arguments and --help; main() returns a code instead.
    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


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
        value = parse_quantity(text)
    except PlanError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than zero")
    return value


def _memory_gib(text: str) -> Decimal:
    """A plain number is GiB (``2``, ``1.5``); with a unit it is bytes (``2Gi``, ``2048Mi``)."""
    value = _positive_quantity(text)
    return value if text.strip()[-1:].isdigit() else value / _GIB


def _parser() -> _Parser:
    parser = _Parser(
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
    except _Exit as exc:
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
    print(render(plan(args.peak_editors, args.prewarm, args.max_total_jobs, cpu, memory)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
