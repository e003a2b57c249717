"""``sandbox-controller trace export|synth`` and ``sandbox-controller simulate``."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import yaml

from ..cli_parser import ParserExit, ReturningParser, archive_size
from ..config import ConfigError, load_settings
from ..durations import parse_duration
from ..model import Limits, PrewarmPolicy
from .simulate import Startup, parse_startup, simulate
from .suspension import ArchivePlatform
from .trace import PROFILES, SynthModel, TraceError, TraceEvent, read_trace, synth, write_trace


class UsageError(Exception):
    """Bad input; the message is for the operator."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _startup(text: str) -> Startup:
    try:
        return parse_startup(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------ limits

# Helm value (under agentSandbox.controller) -> the Settings field it sets.
VALUES = {
    ("scaling", "prewarmPoolSize"): "prewarm_pool_size",
    ("scaling", "maxTotalJobs"): "max_total_jobs",
    ("scaling", "maxSessionsPerUser"): "max_sessions_per_user",
    ("scaling", "maxConcurrentCreates"): "max_concurrent_creates",
    ("scaling", "prewarm", "policy"): "prewarm_policy",
    ("scaling", "prewarm", "min"): "prewarm_min",
    ("scaling", "prewarm", "max"): "prewarm_max",
    ("scaling", "prewarm", "targetWarmHitRate"): "prewarm_target_warm_hit_rate",
    ("idleTimeout",): "idle_timeout",
    ("idleAfter",): "idle_after",
    ("maxLifetime",): "max_lifetime",
    ("startupTimeout",): "startup_timeout",
}
FLAGS = {
    "prewarm": "prewarm_pool_size",
    "prewarm_policy": "prewarm_policy",
    "prewarm_min": "prewarm_min",
    "prewarm_max": "prewarm_max",
    "target_warm_hit_rate": "prewarm_target_warm_hit_rate",
    "max_total_jobs": "max_total_jobs",
    "max_sessions_per_user": "max_sessions_per_user",
    "max_concurrent_creates": "max_concurrent_creates",
    "idle_timeout": "idle_timeout",
    "idle_after": "idle_after",
    "max_lifetime": "max_lifetime",
    "startup_timeout": "startup_timeout",
    "plans": "plans_file",
}


def values_overrides(path: Path) -> dict[str, Any]:
    """The scheduler's settings from a Helm values file (agentSandbox.controller.*)."""
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not YAML: {exc}") from None
    controller = ((doc or {}).get("agentSandbox") or {}).get("controller") or {}
    overrides = {}
    for keys, name in VALUES.items():
        node: Any = controller
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            overrides[name] = node
    return overrides


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits (as the controller takes them; flags win)")
    group.add_argument("--values", type=Path, metavar="FILE", help="the Helm chart's values.yaml")
    group.add_argument("--prewarm", type=int, metavar="N", help="prewarmPoolSize (static)")
    group.add_argument("--prewarm-policy", choices=[p.value for p in PrewarmPolicy])
    group.add_argument("--prewarm-min", type=int, metavar="N")
    group.add_argument("--prewarm-max", type=int, metavar="N")
    group.add_argument("--target-warm-hit-rate", type=float, metavar="R")
    group.add_argument("--max-total-jobs", type=int, metavar="N")
    group.add_argument("--max-sessions-per-user", type=int, metavar="N")
    group.add_argument("--max-concurrent-creates", type=int, metavar="N")
    group.add_argument("--idle-timeout", metavar="DURATION")
    group.add_argument("--idle-after", metavar="DURATION")
    group.add_argument("--max-lifetime", metavar="DURATION")
    group.add_argument("--startup-timeout", metavar="DURATION")
    group.add_argument(
        "--plans", metavar="FILE", help="the plans a trace's plan column names (SANDBOX_PLANS_FILE)"
    )
    parser.add_argument(
        "--startup",
        type=_startup,
        default=Startup(20.0, 60.0),
        metavar="TIME",
        help="pod start-up: 20s (fixed) or p50=20s,p99=60s (default: p50=20s,p99=60s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="for start-up times (default 1)")


def limits_from(args: argparse.Namespace) -> Limits:
    """Settings as the controller would build them: environment, values file, flags."""
    overrides = values_overrides(args.values) if args.values is not None else {}
    for flag, name in FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[name] = value
    try:
        return load_settings(**overrides).limits()
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def load_trace(path: Path, limits: Limits) -> list[TraceEvent]:
    """The trace, checked; every plan it names must be one of ``limits``' plans."""
    try:
        with path.open(newline="") if str(path) != "-" else _stdin() as source:
            events = read_trace(source)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except TraceError as exc:
        raise UsageError(f"{path}: {exc}") from None
    unknown = sorted({e.plan for e in events if e.plan and limits.plan(e.plan) is None})
    if unknown:
        raise UsageError(
            f"{path}: plan {unknown[0]!r} is not in the plans file (--plans or SANDBOX_PLANS_FILE)"
        )
    return events


def _stdin() -> TextIO:
    return open(sys.stdin.fileno(), closefd=False, newline="")


# ------------------------------------------------------------------ simulate

_SWEEP = re.compile(r"^(prewarm|max-total-jobs)=(\d+)\.\.(\d+)(?::(\d+))?$")


def sweep_limits(spec: str, limits: Limits) -> list[Limits]:
    """``prewarm=0..20`` (static sizes) or ``max-total-jobs=50..200:10``."""
    match = _SWEEP.match(spec.strip())
    if match is None:
        raise UsageError(f"--sweep {spec!r}: expected prewarm=A..B or max-total-jobs=A..B[:STEP]")
    name, low, high = match.group(1), int(match.group(2)), int(match.group(3))
    step = int(match.group(4) or 1)
    if high < low or step < 1 or (high - low) // step > 200:
        raise UsageError(f"--sweep {spec!r}: A..B must be increasing, at most 200 steps")
    out = []
    for value in range(low, high + 1, step):
        if name == "prewarm":
            if value > limits.max_total_jobs:
                break
            static = replace(limits.prewarm, policy=PrewarmPolicy.STATIC)
            out.append(replace(limits, prewarm_pool_size=value, prewarm=static))
        elif value >= 1 and value >= limits.prewarm_pool_size:
            out.append(replace(limits, max_total_jobs=value))
    return out


def simulate_parser() -> ReturningParser:
    parser = ReturningParser(
        prog="sandbox-controller simulate",
        description="Replay a trace through the real scheduler on a simulated clock.",
    )
    parser.add_argument("--trace", type=Path, required=True, metavar="FILE", help="CSV trace")
    add_limit_flags(parser)
    parser.add_argument(
        "--sweep",
        metavar="SPEC",
        help="prewarm=0..20: one row per static size, plus the adaptive policy; or "
        "max-total-jobs=50..200:10: one row per cap",
    )
    parser.add_argument(
        "--suspend-after",
        type=_duration,
        metavar="DURATION",
        help="also replay with idle sessions suspended after DURATION (SANDBOX_IDLE_ACTION="
        "suspend, idleTimeout DURATION) and traffic on their threads waking them: the "
        "pod-hours it saves against the settings given, the resumes it costs",
    )
    parser.add_argument(
        "--archive-size",
        type=archive_size,
        default=ArchivePlatform().archive_bytes,
        metavar="SIZE",
        help="average archive of a suspended sandbox, e.g. 200Mi (default 50Mi)",
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw the run (matplotlib)")
    parser.add_argument("--html", type=Path, metavar="FILE", help="a self-contained page")
    return parser


def simulate_main(argv: list[str]) -> int:
    try:
        args = simulate_parser().parse_args(argv)
        limits = limits_from(args)
        events = load_trace(args.trace, limits)
        runs = sweep_limits(args.sweep, limits) if args.sweep else []
        if args.sweep and limits.prewarm.policy is PrewarmPolicy.STATIC:
            runs.append(
                replace(limits, prewarm=replace(limits.prewarm, policy=PrewarmPolicy.ADAPTIVE))
            )
        if limits not in runs:
            runs.append(limits)  # the settings given are always run and shown in full
        archives = ArchivePlatform(archive_bytes=args.archive_size)
        started = time.perf_counter()
        results = [
            simulate(events, run, args.startup, seed=args.seed, archives=archives) for run in runs
        ]
        suspended = None
        if args.suspend_after is not None:
            if args.suspend_after <= 0:
                raise UsageError("--suspend-after must be greater than zero")
            with_suspension = replace(
                limits, snapshots=True, idle_action="suspend", idle_timeout=args.suspend_after
            )
            suspended = simulate(
                events, with_suspension, args.startup, seed=args.seed, archives=archives
            )
        elapsed = time.perf_counter() - started
    except ParserExit as exc:
        return exc.code
    except (UsageError, TraceError) as exc:
        print(f"sandbox-controller simulate: error: {exc}", file=sys.stderr)
        return 2
    from .page import write_html
    from .report import summary, suspension_comparison, table, write_plot

    main_result = results[runs.index(limits)]
    print(summary(main_result))
    if len(results) > 1:
        print()
        print(table(results, given=main_result))
    if suspended is not None:
        print()
        print(suspension_comparison(main_result, suspended))
    print(f"\n({len(results)} run(s) of {len(events)} events in {elapsed:.1f}s)", file=sys.stderr)
    if args.plot is not None:
        write_plot(main_result, args.plot)
    if args.html is not None:
        write_html(results, main_result, args.trace.name, args.html)
    return 0


# ------------------------------------------------------------------ trace


def trace_parser() -> ReturningParser:
    parser = ReturningParser(
        prog="sandbox-controller trace", description="Make traces to simulate."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    export = sub.add_parser("export", help="real sessions from the store, as CSV")
    export.add_argument("--database-url", help="default: SANDBOX_DATABASE_URL")
    export.add_argument("--since", type=_duration, default=7 * 86400.0, help="default 7d")
    export.add_argument(
        "--keep-ids", action="store_true", help="keep user and thread ids (pseudonymised if not)"
    )
    export.add_argument("-o", "--output", type=Path, help="default: standard output")
    model = SynthModel()
    gen = sub.add_parser("synth", help="a synthetic trace from a documented model")
    gen.add_argument(
        "--editors",
        type=int,
        default=model.editors,
        metavar="N",
        help="people using agents (count; default %(default)s)",
    )
    gen.add_argument(
        "--days", type=float, default=model.days, help="trace length in days (default %(default)s)"
    )
    gen.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=model.profile,
        help="the day's shape: office-hours (9-18 with a lunch dip) or flat (default %(default)s)",
    )
    gen.add_argument(
        "--threads-per-day",
        type=float,
        default=model.threads_per_day,
        metavar="N",
        help="new agent threads per editor per day (default %(default)s)",
    )
    gen.add_argument(
        "--session-median",
        type=_duration,
        default=model.session_median,
        metavar="DURATION",
        help="median session length, e.g. 20m (seconds if no unit; default %(default)gs)",
    )
    gen.add_argument(
        "--session-sigma",
        type=float,
        default=model.session_sigma,
        metavar="SIGMA",
        help="spread of session lengths: log-normal sigma, no unit; 0 makes every "
        "session the median (default %(default)s)",
    )
    gen.add_argument(
        "--gap-mean",
        type=_duration,
        default=model.gap_mean,
        metavar="DURATION",
        help="mean idle gap between an editor's activity bursts, e.g. 2m (default %(default)gs)",
    )
    gen.add_argument(
        "--close-share",
        type=float,
        default=model.close_share,
        metavar="SHARE",
        help="share of sessions the editor closes, 0..1; the rest are abandoned to "
        "the idle timeout (default %(default)s)",
    )
    gen.add_argument(
        "--wait-seconds",
        type=float,
        default=model.wait_seconds,
        metavar="SECONDS",
        help="how long each new session waits for a sandbox before giving up, "
        "0..120 seconds (default %(default)g)",
    )
    gen.add_argument(
        "--seed",
        type=int,
        default=model.seed,
        help="random seed: the same seed gives the same trace (default %(default)s)",
    )
    gen.add_argument("-o", "--output", type=Path, help="default: standard output")
    return parser


def trace_main(argv: list[str]) -> int:
    try:
        args = trace_parser().parse_args(argv)
        if args.action == "export":
            events = _export(args)
        else:
            events = synth(_model(args))
    except ParserExit as exc:
        return exc.code
    except (UsageError, TraceError, ConfigError) as exc:
        print(f"sandbox-controller trace: error: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        write_trace(events, sys.stdout)
    else:
        with args.output.open("w", newline="") as out:
            write_trace(events, out)
    return 0


def _model(args: argparse.Namespace) -> SynthModel:
    if args.editors < 1 or args.days <= 0 or args.threads_per_day <= 0:
        raise UsageError("--editors, --days and --threads-per-day must be greater than zero")
    if not 0 <= args.close_share <= 1 or not 0 <= args.wait_seconds <= 120:
        raise UsageError("--close-share must be 0..1 and --wait-seconds 0..120")
    if args.session_median <= 0 or args.gap_mean <= 0 or args.session_sigma < 0:
        raise UsageError("--session-median and --gap-mean must be greater than zero")
    return SynthModel(
        editors=args.editors,
        days=args.days,
        profile=args.profile,
        threads_per_day=args.threads_per_day,
        session_median=args.session_median,
        session_sigma=args.session_sigma,
        gap_mean=args.gap_mean,
        close_share=args.close_share,
        wait_seconds=args.wait_seconds,
        seed=args.seed,
    )


def _export(args: argparse.Namespace) -> list[TraceEvent]:
    from .export import export_trace

    url = args.database_url or load_settings().database_url
    return asyncio.run(export_trace(url, args.since, time.time(), keep_ids=args.keep_ids))
