"""The admission decision's cost with orgs and plans (issue 24), in the pure pool.

    python benchmarks/org_bench.py [--opens 20000] [--rounds 5] [--plain-only]

A Pool (no I/O: scheduler/pool.py) with a warm pool of --opens ready pods takes --opens
warm opens, each a new user and thread, one tick per 100 opens as a round would, and
prints the median CPU microseconds per open over --rounds runs for:
  plain   no org, no plan (the path every existing deployment takes)
  orgs    200 orgs on a plan with every limit on (user limit, org cap, rate, warm share)
--plain-only runs the first alone, so the same script measures a tree without orgs.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sandbox_controller.backends.base import PodPhase, PodStatus
from sandbox_controller.config import Settings
from sandbox_controller.scheduler.pool import Pool


def warm_pool(opens: int, plans: tuple[object, ...]) -> tuple[Pool, float]:
    limits = replace(
        Settings.model_construct().limits(),
        prewarm_pool_size=opens,
        max_total_jobs=2 * opens,
        max_concurrent_creates=opens,
        **({"plans": plans} if plans else {}),
    )
    pool, now = Pool(limits, "tmpl"), 1000.0
    pool.tick(now)
    creates = pool.take_outbox().creates
    for i in range(creates):
        pool.pod_created(f"p{i}", now)
    for i in range(creates):
        pool.pod_observed(PodStatus(f"p{i}", PodPhase.READY, address="x:1"), now)
    pool.tick(now)
    pool.take_outbox()
    return pool, now


def run(opens: int, orgs: bool) -> float:
    plans: tuple[object, ...] = ()
    if orgs:
        from sandbox_controller.model import Plan

        plans = (Plan("team", 3, 1000, 0.5, 10_000),)
    pool, now = warm_pool(opens, plans)
    gc.collect()  # the runs before leave garbage; none of it is this run's to pay for
    started = time.process_time()  # this process's CPU: less of the machine's load
    for i in range(opens):
        request = pool.next_request_id()
        if orgs:
            org = f"org{i % 200}"
            pool.open_session(request, f"u{i}", f"t{i}", 30.0, now, org_id=org, plan="team")
        else:
            pool.open_session(request, f"u{i}", f"t{i}", 30.0, now)
        if i % 100 == 99:
            pool.tick(now)
            pool.take_outbox()
    return (time.process_time() - started) / opens * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plain-only", action="store_true")
    args = parser.parse_args()
    has_orgs = "org_id" in inspect.signature(Pool.open_session).parameters
    kinds = [False] if args.plain_only or not has_orgs else [False, True]
    for orgs in kinds:
        samples = [run(args.opens, orgs) for _ in range(args.rounds)]
        print(
            f"{'orgs' if orgs else 'plain'}: median {statistics.median(samples):.1f} us/open "
            f"({', '.join(f'{s:.1f}' for s in samples)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
