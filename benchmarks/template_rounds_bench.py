"""The scheduler's own cost per warm claim, one template vs several, at the same pool size.

    python benchmarks/template_rounds_bench.py [--pods 9000] [--templates 3]
                                               [--claims 300] [--code BASELINE_TREE]
                                               [--callgrind]

No I/O: a Pool (scheduler/pool.py) filled to --pods warm pods, in one template or split
evenly into --templates, then --claims sessions opened one at a time (naming the
templates in turn), each followed by the rounds that replace its pod (created, then
ready), as the loop drives them. Reports the time per claim (each case in its own
process) and, with --callgrind, the instructions per claim under valgrind: the same
count on a busy machine, where times are not (the claims' count minus a run with none,
so the fill is left out). --code runs the same against another tree (a baseline
worktree), in the same table.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def drive(pods: int, templates: int, claims: int) -> None:
    """Run in the child process, with the code under test first on sys.path."""
    import itertools
    from dataclasses import replace

    from sandbox_controller.backends.base import PodPhase, PodStatus
    from sandbox_controller.config import Settings
    from sandbox_controller.model import Shape, TemplateLimits
    from sandbox_controller.scheduler.pool import Pool

    base = replace(
        Settings.model_construct().limits(),
        activity_lag=0.0,
        hooks=False,
        max_total_jobs=pods + claims + 50,
        prewarm_pool_size=pods,
        max_concurrent_creates=20,
    )
    names: list[str | None] = [None]
    hashes = None
    if templates > 1:
        parts = tuple(TemplateLimits(f"t{i}", pods // templates) for i in range(templates))
        base = replace(base, templates=parts)
        hashes = {t.name: "h" for t in parts}
        names = [t.name for t in parts]
    pool = Pool(base, "h", template_hashes=hashes)
    now = 1000.0
    numbers = itertools.count()
    to_create: list[Shape] = []

    def settle() -> None:
        while to_create:
            made = []
            for shape in to_create:
                made.append(f"pod-{next(numbers)}")
                pool.pod_created(made[-1], now, shape)
            to_create.clear()
            pool.tick(now)
            to_create.extend(pool.take_outbox().create_shapes)
            for name in made:
                pool.pod_observed(PodStatus(name, PodPhase.READY, {}, 0.0, "10.0.0.1:1"), now)
            pool.tick(now)
            to_create.extend(pool.take_outbox().create_shapes)

    pool.tick(now)
    to_create.extend(pool.take_outbox().create_shapes)
    settle()
    assert len(pool.idle) == pods, len(pool.idle)
    started = time.perf_counter()
    for i in range(claims):
        now += 0.01
        name = names[i % len(names)]
        shape = Shape(name) if name else None
        pool.open_session(pool.next_request_id(), f"u{i}", f"t{i}", 30.0, now, shape=shape)
        pool.tick(now)
        out = pool.take_outbox()
        assert out.answers and out.answers[0].outcome.value == "warm", out.answers
        to_create.extend(out.create_shapes)
        settle()
    print(f"RESULT {(time.perf_counter() - started) / max(claims, 1)}")


def child(code: Path, pods: int, templates: int, claims: int, *, callgrind: bool) -> float:
    """Seconds per claim, or with ``callgrind`` the instructions the whole run took."""
    command = [sys.executable, __file__, "--child", str(pods), str(templates), str(claims)]
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT}"}
    if not callgrind:
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return float(re.search(r"RESULT (\S+)", out.stdout).group(1))  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={record}", *command],
            env=env,
            capture_output=True,
            check=True,
        )
        summary = re.search(r"^summary: (\d+)", record.read_text(), re.M)
        assert summary, "no callgrind summary"
        return float(summary.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=9000)
    parser.add_argument("--templates", type=int, default=3)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--code", default="", help="also run this tree (a baseline)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per claim")
    args = parser.parse_args()
    pods = args.pods - args.pods % args.templates  # the same pool split evenly
    trees = [("this tree", ROOT)] + ([("--code", Path(args.code).resolve())] if args.code else [])
    lines = [
        f"Scheduler only, {pods} warm pods, {args.claims} warm claims one at a time.",
        "",
        f"| code | per claim, 1 template | per claim, {args.templates} templates | ratio |",
        "|---|---|---|---|",
    ]
    for label, code in trees:
        figures = []
        for templates in (1, args.templates):
            if args.callgrind:
                full = child(code, pods, templates, args.claims, callgrind=True)
                fill = child(code, pods, templates, 0, callgrind=True)
                figures.append((full - fill) / args.claims)
            else:
                runs = [
                    child(code, pods, templates, args.claims, callgrind=False)
                    for _ in range(args.runs)
                ]
                figures.append(sorted(runs)[len(runs) // 2] * 1e6)
        unit = " instructions" if args.callgrind else " µs"
        lines.append(
            f"| {label} ({code}) | {figures[0]:,.0f}{unit} | {figures[1]:,.0f}{unit} | "
            f"{figures[1] / figures[0]:.2f} |"
        )
        print(lines[-1], file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        drive(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
