"""Adaptive prewarm against every static size, on a synthetic office-hours day (issue 13).

    python benchmarks/sim_bench.py [--editors 200] [--picture benchmarks/sim_example.png]

Replays the same trace through the real scheduler once per static prewarmPoolSize of
the sweep and once with the adaptive policy, all with pod start-up p50 20 s / p99 60 s,
and prints the Markdown table kept in benchmarks/README.md. Then it times a day of
500 editors (the target: under 10 s on this machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from sandbox_controller.config import load_settings
from sandbox_controller.model import Limits, PodState, PrewarmPolicy
from sandbox_controller.sim.report import figures, write_plot
from sandbox_controller.sim.simulate import Result, Startup, simulate
from sandbox_controller.sim.trace import SynthModel, TraceEvent, synth

STARTUP = Startup(20.0, 60.0)
# Far above the day's peak, so the cap never decides: this compares prewarm alone.
CAP = 1000
TARGET = 0.99


def run(events: list[TraceEvent], limits: Limits) -> tuple[Result, float]:
    started = time.perf_counter()
    result = simulate(events, limits, STARTUP)
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", type=int, default=200)
    parser.add_argument("--sizes", type=int, default=10, help="static sizes 0..N")
    parser.add_argument("--picture", type=Path, help="write the adaptive run's plot here")
    args = parser.parse_args(argv)

    events = synth(SynthModel(editors=args.editors, profile="office-hours"))
    base = load_settings(max_total_jobs=CAP).limits()
    rows: list[tuple[Result, float]] = []
    static_policy = replace(base.prewarm, policy=PrewarmPolicy.STATIC)
    for size in range(args.sizes + 1):
        rows.append(run(events, replace(base, prewarm_pool_size=size, prewarm=static_policy)))
    adaptive_policy = replace(base.prewarm, policy=PrewarmPolicy.ADAPTIVE)
    adaptive, adaptive_seconds = run(events, replace(base, prewarm=adaptive_policy))
    rows.append((adaptive, adaptive_seconds))

    opens = sum(1 for e in events if e.kind.value == "open")
    print(
        f"{args.editors} editors, office-hours day: {opens} new sessions, {len(events)} "
        f"events; start-up {STARTUP.describe()}; maxTotalJobs {CAP}\n"
    )
    print(
        "| prewarm | warm hit | wait p50 s | wait p95 s | wait p99 s | 429 | 503 | "
        "reclaims | idle timeouts | peak pods | assigned pod-h | idle-warm pod-h | run s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result, seconds in rows:
        f = figures(result)
        print(
            f"| {f['prewarm']} | {f['warm_hit_rate']:.2%} | {f['wait_p50']:.1f} | "
            f"{f['wait_p95']:.1f} | {f['wait_p99']:.1f} | {f['refused_429']} | "
            f"{f['refused_503']} | {f['reclaims']} | {f['idle_timeouts']} | {f['peak_pods']} | "
            f"{f['assigned_pod_hours']:.1f} | {f['idle_warm_pod_hours']:.1f} | {seconds:.2f} |"
        )
    reaching = [r for r, _ in rows[:-1] if r.warm_hit_rate >= TARGET]
    print()
    if not reaching:
        print(f"No static size up to {args.sizes} reaches {TARGET:.0%} warm hits.")
    else:
        smallest = reaching[0]
        saved = 1 - adaptive.pod_hours(PodState.IDLE) / smallest.pod_hours(PodState.IDLE)
        print(
            f"Smallest static size reaching {TARGET:.0%}: {smallest.limits.prewarm_pool_size} "
            f"({smallest.pod_hours(PodState.IDLE):.1f} idle-warm pod-hours). Adaptive: "
            f"{adaptive.warm_hit_rate:.2%} warm hits, {adaptive.pod_hours(PodState.IDLE):.1f} "
            f"idle-warm pod-hours: {saved:.0%} fewer."
        )

    big = synth(SynthModel(editors=500, profile="office-hours"))
    _, seconds = run(big, replace(base, prewarm=adaptive_policy))
    print(f"A day of 500 editors ({len(big)} events), adaptive: simulated in {seconds:.2f} s.")
    if args.picture is not None:
        write_plot(adaptive, args.picture)
        print(f"Picture: {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
