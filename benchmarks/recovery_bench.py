"""The cost of issue 25's decisions: rebuilding the pool after a restart (recovery.py,
now also sorting out orphans) and deciding warm opens (admission.py, now also asking
whether the user is being deleted). Pure decisions, in process, on a hand-set clock.

    python benchmarks/recovery_bench.py --pods 20000 --rounds 7 --baseline /path/to/main

With ``--baseline DIR``, each round runs the measurement twice in fresh processes, one
with the baseline tree's code (DIR on PYTHONPATH) and one with this tree's, interleaved,
and prints medians and the new/base ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent


def measure(pods: int, opens: int) -> dict[str, float]:
    """Seconds to rebuild a pool of ``pods`` (half assigned to live sessions, 4 in 10
    warm, 1 in 10 that served sessions the store does not know: fewer than the hold's
    20%, so both trees delete them and do the same work), and to decide ``opens`` warm
    opens."""
    from dataclasses import replace

    from sandbox_controller.backends.base import (
        LABEL_SESSION,
        LABEL_STATE,
        LABEL_TEMPLATE_HASH,
        PodPhase,
        PodStatus,
    )
    from sandbox_controller.config import Settings
    from sandbox_controller.model import Pod, PodState, Session, SessionState
    from sandbox_controller.scheduler.pool import Pool
    from sandbox_controller.scheduler.recovery import restore

    now = 1_000_000.0
    limits = replace(
        Settings.model_construct().limits(),
        max_total_jobs=pods + opens + 10,
        prewarm_pool_size=0,
        max_sessions_per_user=10,
    )
    sessions, rows, statuses = [], [], []
    for i in range(pods):
        name = f"pod-{i}"
        labels = {LABEL_TEMPLATE_HASH: "tmpl", LABEL_STATE: "assigned"}
        if i % 2 == 0:  # a live session's
            sessions.append(
                Session(f"s{i}", f"u{i}", f"t{i}", SessionState.READY, now - 60, now - 5, name)
            )
            rows.append(Pod(name, PodState.ASSIGNED, now - 70, "tmpl", session_id=f"s{i}"))
            labels[LABEL_SESSION] = f"h{i}"
        elif i % 10 != 3:  # warm
            labels[LABEL_STATE] = "pool"
            rows.append(Pod(name, PodState.IDLE, now - 70, "tmpl", ready_at=now - 65))
        else:  # an orphan (i % 10 == 3)
            labels[LABEL_SESSION] = f"h{i}"
        statuses.append(PodStatus(name, PodPhase.READY, labels, now - 70, f"10.0.0.{i % 250}:8080"))

    started = time.perf_counter()
    pool = Pool(limits, "tmpl")
    restore(pool, sessions, rows, statuses, now)
    pool.tick(now)
    rebuilt = time.perf_counter() - started

    warm = Pool(limits, "tmpl")
    warm_pods = [s for s in statuses if s.labels[LABEL_STATE] == "pool"]
    restore(warm, [], [r for r in rows if r.session_id is None], warm_pods, now)
    warm.tick(now)
    warm.take_outbox()
    started = time.perf_counter()
    for i in range(min(opens, len(warm.idle))):
        warm.open_session(i + 1, f"user-{i}", f"thread-{i}", 0.0, now)
        if i % 100 == 99:
            warm.tick(now)
            warm.take_outbox()
    decided = time.perf_counter() - started
    return {"restore_s": rebuilt, "open_us": decided / max(1, min(opens, len(warm.idle))) * 1e6}


def _run_in(tree: Path, pods: int, opens: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # This file is loaded by its path, so the tree's own sandbox_controller is measured.
    code = (
        "import json, runpy, sandbox_controller, sys; "
        "assert sandbox_controller.__file__.startswith(sys.argv[2]), sandbox_controller.__file__; "
        "measure = runpy.run_path(sys.argv[1])['measure']; "
        "print(json.dumps(measure(int(sys.argv[3]), int(sys.argv[4]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, __file__, str(tree), str(pods), str(opens)],
        env=env, capture_output=True, text=True, check=True, cwd=tree,
    )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--opens", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="another tree to compare against")
    args = parser.parse_args(argv)
    trees = {"new": HERE}
    if args.baseline is not None:
        trees = {"base": args.baseline.resolve(), "new": HERE}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(_run_in(tree, args.pods, args.opens))
    medians: dict[str, dict[str, Any]] = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for name, runs in results.items()
    }
    for name, values in medians.items():
        print(f"{name}: restore of {args.pods} pods {values['restore_s'] * 1000:.1f} ms, "
              f"warm open decision {values['open_us']:.1f} us (medians of {args.rounds})")  # fmt: skip
    if "base" in medians:
        for key in ("restore_s", "open_us"):
            ratio = medians["new"][key] / medians["base"][key]
            print(f"new/base {key}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
