"""``sandbox-controller plan --trace``: settings from simulating your own traffic.

Static sizes are tried from 0 up until one reaches the target warm-hit rate; the
adaptive policy is run with room to grow to twice that size; the cheaper of the two in
idle-warm pod-hours that reaches the target is recommended. ``maxTotalJobs`` is then
the smallest cap at which the recommendation keeps its warm-hit rate and refuses no
more than the budget with 503.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..model import Limits, Outcome, PodState, PrewarmPolicy
from .cli import Parser, UsageError, _Exit, add_limit_flags, limits_from, load_trace
from .simulate import Result, Startup, simulate
from .trace import TraceEvent

UNCAPPED = 100_000  # "no cap" while sizing the pool: the cap is chosen afterwards
MAX_STATIC = 100


@dataclass(frozen=True)
class Recommendation:
    static: Result | None  # the smallest static size that reaches the target, if any
    adaptive: Result
    chosen: Result  # with the recommended maxTotalJobs
    target: float
    budget: float

    @property
    def limits(self) -> Limits:
        return self.chosen.limits


def refused_share(result: Result) -> float:
    asked = sum(result.requests[o] for o in (Outcome.WARM, Outcome.COLD, Outcome.CAPACITY))
    return result.requests[Outcome.CAPACITY] / asked if asked else 0.0


def recommend(
    events: list[TraceEvent],
    limits: Limits,
    startup: Startup,
    *,
    target: float,
    budget: float,
    seed: int = 1,
) -> Recommendation:
    uncapped = replace(limits, max_total_jobs=UNCAPPED)

    def run(candidate: Limits) -> Result:
        return simulate(events, candidate, startup, seed=seed)

    static_policy = replace(limits.prewarm, policy=PrewarmPolicy.STATIC)
    static: Result | None = None
    for size in range(MAX_STATIC + 1):
        result = run(replace(uncapped, prewarm_pool_size=size, prewarm=static_policy))
        if result.warm_hit_rate >= target:
            static = result
            break
    high = 2 * static.limits.prewarm_pool_size if static is not None else MAX_STATIC
    adaptive_policy = replace(
        limits.prewarm,
        policy=PrewarmPolicy.ADAPTIVE,
        max=max(high, limits.prewarm.min + 1),
        target_warm_hit_rate=target,
    )
    adaptive = run(replace(uncapped, prewarm=adaptive_policy))
    best = adaptive
    if static is not None and (
        adaptive.warm_hit_rate < target
        or static.pod_hours(PodState.IDLE) <= adaptive.pod_hours(PodState.IDLE)
    ):
        best = static

    # The smallest cap that keeps the target and the refusal budget (bisection: fewer
    # pods never serve more).
    low, high_cap = 1, max(best.peak_pods, 1)
    chosen = run(replace(best.limits, max_total_jobs=high_cap))
    while low < high_cap:
        middle = (low + high_cap) // 2
        if middle < best.limits.prewarm_pool_size:
            low = middle + 1
            continue
        trial = run(replace(best.limits, max_total_jobs=middle))
        if (
            trial.warm_hit_rate >= min(target, best.warm_hit_rate)
            and refused_share(trial) <= budget
        ):
            high_cap, chosen = middle, trial
        else:
            low = middle + 1
    return Recommendation(static, adaptive, chosen, target, budget)


def values_fragment(limits: Limits) -> str:
    lines = [
        "agentSandbox:",
        "  controller:",
        "    scaling:",
        f"      prewarmPoolSize: {limits.prewarm_pool_size}",
        f"      maxTotalJobs: {limits.max_total_jobs}",
    ]
    p = limits.prewarm
    if p.policy is PrewarmPolicy.ADAPTIVE:
        lines += [
            "      prewarm:",
            "        policy: adaptive",
            f"        min: {p.min}",
            f"        max: {p.max}",
            f"        targetWarmHitRate: {p.target_warm_hit_rate:g}",
        ]
    return "\n".join(lines)


def render(rec: Recommendation, events: int, trace: Path) -> str:
    from .report import setting

    chosen = rec.chosen
    lines = [
        f"Simulated {trace} ({chosen.duration / 3600:.1f} h, {events} events), "
        f"pod start-up {chosen.startup.describe()}",
        f"Target: {rec.target:.2%} warm hits, at most {rec.budget:.2%} refused with 503",
    ]
    if rec.static is None:
        lines.append(f"static: no prewarmPoolSize up to {MAX_STATIC} reaches the target")
    else:
        lines.append(
            f"{setting(rec.static)}: {rec.static.warm_hit_rate:.2%} warm hits, "
            f"{rec.static.pod_hours(PodState.IDLE):.1f} idle-warm pod-hours"
        )
    lines.append(
        f"{setting(rec.adaptive)}: {rec.adaptive.warm_hit_rate:.2%} warm hits, "
        f"{rec.adaptive.pod_hours(PodState.IDLE):.1f} idle-warm pod-hours"
    )
    lines += [
        f"Recommended: {setting(chosen)}, maxTotalJobs {chosen.limits.max_total_jobs} "
        f"({chosen.warm_hit_rate:.2%} warm hits, {chosen.requests[Outcome.CAPACITY]} x 503, "
        f"peak {chosen.peak_pods} pods)",
        "",
        "Paste into values.yaml:",
        values_fragment(chosen.limits),
    ]
    return "\n".join(lines)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError(text)
    return value


def main(argv: list[str]) -> int:
    parser = Parser(
        prog="sandbox-controller plan --trace",
        description="Recommend prewarm and maxTotalJobs by simulating a trace.",
    )
    parser.add_argument("--trace", type=Path, required=True, metavar="FILE")
    add_limit_flags(parser)
    parser.add_argument(
        "--refusal-budget",
        type=_rate,
        default=0.0,
        metavar="SHARE",
        help="share of new sessions that may be refused with 503 (default 0)",
    )
    try:
        args = parser.parse_args(argv)
        limits = limits_from(args)
        events = load_trace(args.trace)
        target = limits.prewarm.target_warm_hit_rate
        rec = recommend(
            events, limits, args.startup, target=target, budget=args.refusal_budget, seed=args.seed
        )
    except _Exit as exc:
        return exc.code
    except UsageError as exc:
        print(f"sandbox-controller plan: error: {exc}", file=sys.stderr)
        return 2
    print(render(rec, len(events), args.trace))
    return 0
