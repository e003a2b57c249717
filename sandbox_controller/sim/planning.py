"""``sandbox-controller plan --trace``: settings from simulating your own traffic.

Static sizes are tried from 0 up until one reaches the target warm-hit rate; the
adaptive policy is run with room to grow to twice that size; the cheaper of the two in
idle-warm pod-hours that reaches the target is recommended. ``maxTotalJobs`` is then
its simulated peak (or, with a refusal budget, the smallest cap that keeps the target
and refuses no more than the budget with 503) plus ``--headroom``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..cli_parser import ParserExit, ReturningParser
from ..model import Limits, Outcome, PodState, PrewarmPolicy
from .advice import (
    DEFAULT_HEADROOM,
    applying_setting,
    values_fragment,
    with_headroom,
)
from .cli import UsageError, add_limit_flags, limits_from, load_trace
from .simulate import Result, Startup, simulate
from .trace import TraceError, TraceEvent

UNCAPPED = 100_000  # "no cap" while sizing the pool: the cap is chosen afterwards
MAX_STATIC = 100


@dataclass(frozen=True)
class Recommendation:
    static: Result | None  # the smallest static size that reaches the target, if any
    adaptive: Result
    chosen: Result  # with the recommended maxTotalJobs
    target: float
    budget: float
    needed: int  # pods the trace needed: the peak, or the smallest cap within the budget
    headroom: float

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
    headroom: float = DEFAULT_HEADROOM,
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

    needed = max(best.peak_pods, 1)
    if budget > 0:
        needed = _smallest_cap(run, best, target, budget)
    cap = max(with_headroom(needed, headroom), best.limits.prewarm_pool_size)
    chosen = run(replace(best.limits, max_total_jobs=cap))
    return Recommendation(static, adaptive, chosen, target, budget, needed, headroom)


def _smallest_cap(
    run: Callable[[Limits], Result], best: Result, target: float, budget: float
) -> int:
    """The smallest cap that keeps the target and the refusal budget (bisection: fewer
    pods never serve more)."""
    low, high = 1, max(best.peak_pods, 1)
    while low < high:
        middle = (low + high) // 2
        if middle < best.limits.prewarm_pool_size:
            low = middle + 1
            continue
        trial = run(replace(best.limits, max_total_jobs=middle))
        if (
            trial.warm_hit_rate >= min(target, best.warm_hit_rate)
            and refused_share(trial) <= budget
        ):
            high = middle
        else:
            low = middle + 1
    return high


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
    cap = chosen.limits.max_total_jobs
    spare = cap - rec.needed
    basis = (
        "the simulated peak"
        if rec.budget == 0
        else f"the smallest cap refusing at most {rec.budget:.2%} with 503"
    )
    lines += [
        f"Recommended: {setting(chosen)} ({chosen.warm_hit_rate:.2%} warm hits, "
        f"{chosen.requests[Outcome.CAPACITY]} x 503, peak {chosen.peak_pods} pods)",
        f"  {applying_setting(chosen.limits)}",
        f"  maxTotalJobs {cap} = {rec.needed} pods ({basis}) + {spare} pods of headroom "
        f"({rec.headroom:.0%}, --headroom) for a busier day than this trace",
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


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 10.0:
        raise ValueError(text)
    return value


def main(argv: list[str]) -> int:
    parser = ReturningParser(
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
    parser.add_argument(
        "--headroom",
        type=_share,
        default=DEFAULT_HEADROOM,
        metavar="SHARE",
        help="room above the pods the trace needed, as a share: 0.25 is 25%% more "
        f"(default {DEFAULT_HEADROOM:g})",
    )
    try:
        args = parser.parse_args(argv)
        limits = limits_from(args)
        events = load_trace(args.trace, limits)
        target = limits.prewarm.target_warm_hit_rate
        rec = recommend(
            events,
            limits,
            args.startup,
            target=target,
            budget=args.refusal_budget,
            headroom=args.headroom,
            seed=args.seed,
        )
    except ParserExit as exc:
        return exc.code
    except (UsageError, TraceError) as exc:
        print(f"sandbox-controller plan: error: {exc}", file=sys.stderr)
        return 2
    print(render(rec, len(events), args.trace))
    return 0
