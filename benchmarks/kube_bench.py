"""The controller on the Kubernetes backend at scale, against kubesim.

    python benchmarks/kube_bench.py [--pool 3700] [--claims 3600] [--serial 1000]
                                    [--concurrency 50] [--max-total N] [--noop 5]
                                    [--restart [--restarts 3] [--restart-baseline DIR]]
                                    [--refill 300]
                                    [--refill-qps 20:40,100:200]
                                    [--database sqlite|postgres] [--templates 3]

Two parts, each with kubesim and the controller (``sandbox-controller serve``,
SANDBOX_BACKEND=kubernetes) as separate processes, so the controller's RSS is its own:

1. Warm claims: a warm pool of --pool pods, then --claims POST /sessions (a new user
   and thread each) over the real HTTP API: the first --serial one at a time by wrk
   (Debian package `wrk`), the rest from --concurrency clients at once. maxTotalJobs leaves room
   for the refill, so the pool refills while claims are served, as in production.
   Reports claim latency (client-side and the controller's own histogram), controller
   RSS, and Kubernetes API calls per session from kubesim's call record.
   With --templates N, part 1 runs again with the same pool split into N templates'
   warm pools (claims name them in turn), and the two are compared.
   With --noop, the controller runs as benchmarks/bench_app.py (the same app plus
   /bench/noop), and the same --concurrency connections first hit /bench/noop for
   --noop seconds: the HTTP ceiling of claim_bench.py, at this pool size.
   With --restart, the controller is then SIGKILLed and started again on the same
   database and kubesim, as the same pod's next process (it takes the lease at once):
   the time from its start to its first HTTP answer and to its first warm claim
   answered (list, rebuild, lead); --restarts N times, the median. With
   --restart-baseline DIR the restarts alternate between DIR's code and this tree's,
   on the same pods and database: before and after in one run.
   With --noop and BENCH_PROFILE=DIR, pyinstrument profiles the controller during the
   one-at-a-time and the loaded claims (DIR/serial.txt, DIR/loaded.txt).
2. Refill vs QPS: a --refill pod pool from zero to ready under each client rate limit
   (qps:burst), against the bound the limit sets: (API calls made - burst) / qps.

Writes a Markdown table to stdout and to benchmarks/results/kube.md (for benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.common import (
    ROOT,
    TOKEN,
    TOKEN_SECRET,
    Kubesim,
    drop_database,
    free_port,
    rss_mib,
    run_wrk,
    stop,
    wait_leader,
)
from benchmarks.common import fresh_database as _fresh_database

# The controller's code: this tree, or --code (a baseline worktree, run by this bench).
CODE = ROOT
# --restart-baseline: the tree whose restarts alternate with CODE's.
BASELINE = ROOT


def fresh_database(kind: str, tmp: Path) -> str:
    return _fresh_database(kind, tmp, prefix="kube_bench")


# With --restart the controller runs as one pod's container (SANDBOX_POD_NAME), so the
# SIGKILL and restart are a container restart in that pod, as on Kubernetes.
RESTART_POD = "kube-bench-controller"


def start_controller(
    kubeconfig: str,
    database: str,
    port: int,
    *,
    pool: int,
    max_total: int,
    qps: float,
    burst: int,
    creates: int,
    templates_file: str | None = None,
    bench_app: bool = False,
    pod_name: str | None = None,
    code: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    code = code or CODE
    env = {
        **os.environ,
        "PYTHONPATH": str(code),
        "SANDBOX_DATABASE_URL": database,
        "SANDBOX_BACKEND": "kubernetes",
        "SANDBOX_KUBECONFIG": kubeconfig,
        "SANDBOX_NAMESPACE": "default",
        "SANDBOX_PREWARM_POOL_SIZE": str(pool),
        "SANDBOX_MAX_TOTAL_JOBS": str(max_total),
        "SANDBOX_MAX_SESSIONS_PER_USER": "5",
        "SANDBOX_MAX_CONCURRENT_CREATES": str(creates),
        "SANDBOX_KUBE_QPS": str(qps),
        "SANDBOX_KUBE_BURST": str(burst),
        "SANDBOX_API_TOKEN": TOKEN,
        "SANDBOX_TOKEN_SECRET": TOKEN_SECRET,
        # kubesim runs no workload here (nothing on the pods' port): no claim hook.
        "SANDBOX_HOOKS": "false",
        "SANDBOX_HOST": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_LOG_LEVEL": "warning",
    }
    if log is not None:  # its start's milestones, timed (restart_phases)
        env["SANDBOX_LOG_LEVEL"] = "info"
    if templates_file is not None:
        env["SANDBOX_TEMPLATES_FILE"] = templates_file
    if pod_name is not None:  # as the chart sets it: a restart is the same pod's
        env["SANDBOX_POD_NAME"] = pod_name
    command = [sys.executable, "-m", "sandbox_controller.cli", "serve"]
    if bench_app:  # the same app plus /bench/noop, served as claim_bench.py serves it
        command = [
            *(sys.executable, "-m", "uvicorn", "--factory", "benchmarks.bench_app:build"),
            *("--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop"),
            *("--http", "httptools", "--log-level", "warning", "--no-access-log"),
        ]
    if log is None:
        return subprocess.Popen(command, env=env, cwd=code)
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=code, stderr=out)


# Log lines of a controller's start (controller.py, scheduler/rounds.py), in order.
MILESTONES = {
    "store": "session tokens signed",  # imports done, the database answers
    "lease": "leading with lease epoch",  # the backend made, the lease taken
    "rebuilt": "recovered ",  # pods listed, the pool rebuilt (and its first commit)
}


def restart_phases(log: Path, started: float) -> dict[str, float]:
    """Seconds from ``started`` (wall time) to each milestone in the log of
    ``sandbox-controller serve`` (asctime, local time); {} if none is found."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        for name, text in MILESTONES.items():
            if name not in found and text in line:
                try:
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                except ValueError:
                    continue
                found[name] = at - started
    return found


def lease_left(database: str) -> float:
    """Seconds the leader lease still has (PostgreSQL only; 0 elsewhere)."""
    if not database.startswith("postgresql"):
        return 0.0
    name = database.rsplit("/", 1)[1]
    query = "SELECT max(expires_at) - extract(epoch from clock_timestamp()) FROM leader_lease"
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", name, "-Atc", query],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return max(0.0, float(out or 0))


async def first_warm_claim(base: str, timeout: float = 120) -> float:
    """Seconds until POST /sessions answers 201 ready (a new user each try, every 20 ms):
    refused connections and 503 not_leader until the new controller leads."""
    started, last = time.monotonic(), "no answer"
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        for attempt in range(1_000_000):
            if time.monotonic() - started > timeout:
                break
            body = {
                "user_id": f"restart-{attempt}",
                "thread_id": f"restart-{attempt}",
                "wait_seconds": 0,
            }
            try:
                r = await client.post("/sessions", json=body)
                if r.status_code == 201 and r.json().get("state") == "ready":
                    return time.monotonic() - started
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.02)
    raise TimeoutError(f"the restarted controller never served a warm claim: {last}")


async def pool_status(client: httpx.AsyncClient) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = (await client.get("/pool")).json()
        return body if "pods" in body else None  # a 503 while the store is away
    except (httpx.HTTPError, ValueError):
        return None


async def wait_refilled(
    client: httpx.AsyncClient, pool: int, max_total: int, timeout: float
) -> float:
    """Seconds until the pool is refilled as far as maxTotalJobs allows: ``pool`` idle,
    or every pod not assigned. Judged afresh at each poll: claims wrk left in flight
    are still being assigned when the wait begins (a target taken once, at the start,
    could never be reached)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = await pool_status(client)
        if status is not None:
            pods = status["pods"]
            if pods["idle"] >= min(pool, max_total - pods["assigned"]):
                return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the pool never refilled to {pool} idle pods")


async def wait_idle(client: httpx.AsyncClient, idle: int, timeout: float) -> float:
    """Seconds until the pool shows ``idle`` ready pods (polled every 20 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pool = await pool_status(client)
        if pool is not None and pool["pods"]["idle"] >= idle:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the pool never reached {idle} idle pods")


def api_calls(stats: dict[str, Any]) -> Counter[str]:
    return Counter({k: v for k, v in stats["by_call"].items() if not k.startswith("discovery")})


def warm_histogram(metrics: str) -> dict[float, float]:
    """Cumulative buckets of sandbox_session_assign_seconds{path="warm"}."""
    buckets = {}
    for m in re.finditer(
        r'sandbox_session_assign_seconds_bucket\{le="([^"]+)",path="warm"\} ([\d.e+]+)', metrics
    ):
        buckets[float(m.group(1))] = float(m.group(2))
    return buckets


def bucket_quantile(buckets: dict[float, float], q: float) -> float:
    total = buckets[float("inf")]
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return float("inf")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds the process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def templates_file(tmp: Path, count: int, pool: int) -> tuple[str, str]:
    """``count`` templates of equal warm pools summing to ``pool``, and their names."""
    names = [f"t{i}" for i in range(count)]
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "templates.yaml"
    path.write_text("".join(f"- name: {n}\n  prewarm: {{size: {pool // count}}}\n" for n in names))
    return str(path), ",".join(names)


async def warm_claims(args: argparse.Namespace, tmp: Path, templates: int = 1) -> dict[str, Any]:
    # Room for every claim's replacement, and for the claims wrk still has in flight
    # when it stops counting (at most one per connection).
    max_total = args.max_total or args.pool + args.claims + args.concurrency
    nodes = max_total // 100 + 2
    sim = Kubesim(tmp, nodes=nodes, node_cpu="128", node_memory="512Gi", startup_delay=0.05)
    database = fresh_database(args.database, tmp)
    port = free_port()
    path, names = templates_file(tmp, templates, args.pool) if templates > 1 else (None, "")
    ctl = start_controller(
        sim.kubeconfig,
        database,
        port,
        pool=args.pool,
        max_total=max_total,
        qps=args.qps,
        burst=args.burst,
        creates=args.creates,
        templates_file=path,
        bench_app=bool(args.noop),
        pod_name=RESTART_POD if args.restart else None,
    )
    result: dict[str, Any] = {"max_total": max_total}
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=120,
            limits=httpx.Limits(max_connections=args.concurrency),
        ) as client:
            await wait_leader(client)
            await wait_idle(client, args.pool, timeout=900)
            result["fill_s"] = time.time() - sim.first_create_at()
            result["rss_pool_mib"] = rss_mib(ctl.pid)[0]
            before = api_calls(sim.stats())
            base = str(client.base_url).rstrip("/")
            # Both phases by wrk, as in claim_bench.py, so the load generator's own
            # overhead stays out of the numbers. One at a time first: the latency of a
            # warm claim itself, no queueing.
            profiling = bool(args.noop and os.environ.get("BENCH_PROFILE"))
            tag = f"-{templates}t" if templates > 1 else ""  # the one-template run's names stay
            if profiling:
                await client.post("/bench/profile/start")
            cpu_before = cpu_seconds(ctl.pid)
            serial = run_wrk(base, "/sessions", 1, 300, "serial", args.serial, names)
            # The controller's CPU per claim: what templates add, read apart from the
            # latency a loaded machine adds to it.
            result["serial_cpu_ms"] = (cpu_seconds(ctl.pid) - cpu_before) * 1000 / args.serial
            if profiling:
                await client.post("/bench/profile/stop", params={"name": f"serial{tag}"})
            # Then the rest from --concurrency connections at once (wrk's two threads
            # each stop after their share of answers).
            share = -(-(args.claims - serial["requests"]) // 2)
            if args.noop:  # the HTTP ceiling, from the same connections
                cpu_before = cpu_seconds(ctl.pid)
                result["noop"] = run_wrk(base, "/bench/noop", args.concurrency, args.noop, "noop")
                result["noop_cpu_ms"] = (
                    (cpu_seconds(ctl.pid) - cpu_before) * 1000 / max(result["noop"]["requests"], 1)
                )
            if profiling:
                await client.post("/bench/profile/start")
            cpu_before = cpu_seconds(ctl.pid)
            loaded = run_wrk(base, "/sessions", args.concurrency, 300, "loaded", share, names)
            # The controller's CPU per claim at load, beside the noop's per request: what
            # a claim costs beyond the HTTP ceiling, apart from the machine's noise.
            result["loaded_cpu_ms"] = (
                (cpu_seconds(ctl.pid) - cpu_before) * 1000 / max(loaded["requests"], 1)
            )
            if profiling:
                await client.post("/bench/profile/stop", params={"name": f"loaded{tag}"})
            result["rss_claims_mib"] = rss_mib(ctl.pid)[0]
            # Let the refill finish, so calls per session include the replacement pod
            # (and the controller has answered every claim wrk left in flight).
            result["refill_s"] = await wait_refilled(client, args.pool, max_total, timeout=900)
            metrics = (await client.get("/metrics")).text
            rss, hwm = rss_mib(ctl.pid)
            result["rss_end_mib"], result["rss_peak_mib"] = rss, hwm
            after = api_calls(sim.stats())
            stats = sim.stats()
            if args.restart:
                result["restart_pool"] = (await pool_status(client) or {}).get("pods")
                runs = result["restart_runs"] = []
                # Alternately the baseline's code and this tree's (--restart-baseline),
                # on the same kubesim and database: before and after in one sitting.
                codes = [CODE] if not args.restart_baseline else [BASELINE, CODE]
                for i in range(args.restarts * len(codes)):
                    code = codes[i % len(codes)]
                    lease = lease_left(database)
                    ctl.kill()  # SIGKILL: no hand-over
                    ctl.wait()
                    log = tmp / f"restart-{i}.log"
                    started = time.time()
                    ctl = start_controller(
                        sim.kubeconfig,
                        database,
                        port,
                        pool=args.pool,
                        max_total=max_total,
                        qps=args.qps,
                        burst=args.burst,
                        creates=args.creates,
                        bench_app=bool(args.noop),
                        pod_name=RESTART_POD,
                        code=code,
                        log=log,
                    )
                    total = await first_warm_claim(base)
                    runs.append(
                        {
                            "code": "baseline"
                            if args.restart_baseline and code == BASELINE
                            else "new",
                            "s": total,
                            "lease_left_s": lease,
                            "rss_mib": rss_mib(ctl.pid)[0],
                            **restart_phases(log, started),
                        }
                    )
                    print(json.dumps(runs[-1]), file=sys.stderr)
                    await asyncio.sleep(2)  # its first rounds' writes, as after any start
                new = [r for r in runs if r["code"] == "new"]
                result["restart_s"] = statistics.median(r["s"] for r in new)
                result["lease_left_s"] = new[0]["lease_left_s"]
                result["restart_rss_mib"] = new[-1]["rss_mib"]
                base_runs = [r["s"] for r in runs if r["code"] == "baseline"]
                if base_runs:
                    result["restart_baseline_s"] = statistics.median(base_runs)
    finally:
        stop(ctl)
        sim.stop()
        drop_database(database)
    calls = after - before
    buckets = warm_histogram(metrics)
    outcomes = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'sandbox_session_requests_total\{outcome="(\w+)"\} ([\d.e+]+)', metrics
        )
    }
    sessions = sum(outcomes.values())
    result.update(
        outcomes={k: v for k, v in outcomes.items() if v},
        warm=outcomes.get("warm", 0.0),
        sessions=sessions,
        serial_claims=serial["requests"],
        serial_errors=serial["non2xx"] + serial["socket_errors"],
        serial_p50_ms=serial["p50_us"] / 1000,
        serial_p90_ms=serial["p90_us"] / 1000,
        serial_p99_ms=serial["p99_us"] / 1000,
        serial_max_ms=serial["max_us"] / 1000,
        loaded_claims=loaded["requests"],
        loaded_errors=loaded["non2xx"] + loaded["socket_errors"],
        p50_ms=loaded["p50_us"] / 1000,
        p99_ms=loaded["p99_us"] / 1000,
        max_ms=loaded["max_us"] / 1000,
        server_p50_le_ms=bucket_quantile(buckets, 0.5) * 1000,
        server_p99_le_ms=bucket_quantile(buckets, 0.99) * 1000,
        calls=dict(sorted(calls.items())),
        calls_per_session=sum(calls.values()) / max(sessions, 1),
        max_pods_seen=stats["max_pods_seen"],
        claims_per_s=loaded["rps"],
    )
    return result


async def refill(args: argparse.Namespace, tmp: Path, qps: float, burst: int) -> dict[str, Any]:
    sim = Kubesim(
        tmp, nodes=args.refill // 100 + 2, node_cpu="128", node_memory="512Gi", startup_delay=0.05
    )
    database = fresh_database(args.database, tmp)
    port = free_port()
    # The create window is wide (50) so that only the rate limit can be the bound.
    ctl = start_controller(
        sim.kubeconfig,
        database,
        port,
        pool=args.refill,
        max_total=args.refill,
        qps=qps,
        burst=burst,
        creates=50,
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            await wait_leader(client)
            await wait_idle(client, args.refill, timeout=900)
            ready = time.time()
            first = sim.first_create_at()
            # Only the calls made until the pool was ready: labels still queued after it
            # are not part of what held the refill back.
            calls = api_calls(sim.stats())
    finally:
        stop(ctl)
        sim.stop()
        drop_database(database)
    total = sum(calls.values())
    return {
        "qps": qps,
        "burst": burst,
        "pods": args.refill,
        "ready_s": ready - first,
        "calls": total,
        "creates": calls.get("create pods 201", 0),
        "bound_s": max(0.0, (total - burst) / qps),
    }


def render(args: argparse.Namespace, warm: dict[str, Any], refills: list[dict[str, Any]]) -> str:
    command = "python benchmarks/kube_bench.py " + " ".join(sys.argv[1:])
    lines = [
        "# Kubernetes backend at scale (kubesim)",
        "",
        f"Command: `{command.strip()}`  ",
        f"Controller code: {CODE}. Database: {args.database}; kubesim and the controller each in their own process; "
        f"{os.cpu_count()} CPUs shared with the load generator.",
        "",
        f"## Warm claims: pool of {args.pool}, {args.claims} claims at concurrency "
        f"{args.concurrency} (client-side API rate limit qps {args.qps:g}, burst {args.burst})",
        "",
        "| measure | value |",
        "|---|---|",
        f"| pool of {args.pool} from zero to ready | {warm['fill_s']:.1f} s |",
        f"| warm claim latency p50 / p90 / p99 / max, one at a time ({warm['serial_claims']} "
        f"claims, wrk over HTTP, {warm['serial_errors']} errors) | "
        f"{warm['serial_p50_ms']:.1f} / {warm['serial_p90_ms']:.1f} / "
        f"{warm['serial_p99_ms']:.1f} / {warm['serial_max_ms']:.1f} ms |",
        f"| claim latency p50 / p99 / max at concurrency {args.concurrency} "
        f"({warm['loaded_claims']} claims, wrk, {warm['loaded_errors']} errors) | "
        f"{warm['p50_ms']:.1f} / {warm['p99_ms']:.1f} / {warm['max_ms']:.1f} ms |",
        f"| claim latency p50 / p99 (controller histogram, bucket upper bound) | "
        f"≤ {warm['server_p50_le_ms']:g} / ≤ {warm['server_p99_le_ms']:g} ms |",
        f"| claims served warm (the controller's count, with those wrk left in flight) | "
        f"{warm['warm']:.0f} of {warm['sessions']:.0f} "
        f"({', '.join(f'{k}: {v:.0f}' for k, v in warm['outcomes'].items())}) |",
        f"| throughput at concurrency {args.concurrency} | {warm['claims_per_s']:.0f} claims/s |",
        f"| controller RSS: pool ready / after claims / after refill (peak) | "
        f"{warm['rss_pool_mib']:.0f} / {warm['rss_claims_mib']:.0f} / {warm['rss_end_mib']:.0f} "
        f"({warm['rss_peak_mib']:.0f}) MiB |",
        f"| Kubernetes API calls per session (claim + its refill) | "
        f"{warm['calls_per_session']:.2f} ({', '.join(f'{k}: {v}' for k, v in warm['calls'].items())}) |",
        f"| refill of the {warm['sessions']:.0f} claimed pods after the claims | {warm['refill_s']:.1f} s |",
        f"| most pods kubesim ever held | {warm['max_pods_seen']} "
        f"(maxTotalJobs {warm['max_total']}) |",
    ]
    if "noop" in warm:
        noop = warm["noop"]
        lines.append(
            f"| /bench/noop at concurrency {args.concurrency} (the HTTP ceiling, same app) | "
            f"{noop['rps']:.0f} req/s, p50 {noop['p50_us'] / 1000:.1f} ms; claims reach "
            f"{warm['claims_per_s'] / noop['rps']:.0%} of it |"
        )
        lines.append(
            f"| controller CPU per request: claim one at a time / claim at concurrency "
            f"{args.concurrency} / noop at concurrency {args.concurrency} | "
            f"{warm['serial_cpu_ms']:.2f} / {warm['loaded_cpu_ms']:.2f} / "
            f"{warm['noop_cpu_ms']:.2f} ms |"
        )
    if "restart_s" in warm:
        runs = warm["restart_runs"]
        new = [r for r in runs if r["code"] == "new"]
        phases = ""
        if all(name in r for r in new for name in MILESTONES):
            at = {name: statistics.median(r[name] for r in new) for name in MILESTONES}
            phases = (
                f"; medians, seconds after the restart: imported and the store answers "
                f"{at['store']:.2f}, backend made and leading {at['lease']:.2f}, pods "
                f"listed and pool rebuilt {at['rebuilt']:.2f}"
            )
        lines.append(
            f"| SIGKILL, restart to the first warm claim (median of {len(new)}; its pod's "
            f"next process takes the lease at once) | {warm['restart_s']:.2f} s{phases} "
            f"(pods then: {warm['restart_pool']}; RSS {warm['restart_rss_mib']:.0f} MiB) |"
        )
        if "restart_baseline_s" in warm:
            each = ", ".join(f"{r['code']} {r['s']:.2f}" for r in runs)
            lines.append(
                f"| the same, baseline code ({BASELINE}), alternating in this run | "
                f"{warm['restart_baseline_s']:.2f} s (median); new / baseline "
                f"{warm['restart_s'] / warm['restart_baseline_s']:.2f} (each, s: {each}) |"
            )
    many = warm.get("templates")
    if many:
        ratio = many["serial_p99_ms"] / warm["serial_p99_ms"]
        lines += [
            "",
            f"## Warm claims with {args.templates} templates vs one (the same run)",
            "",
            f"The same pool of {args.pool}, split evenly into {args.templates} templates' "
            "warm pools under the one maxTotalJobs; claims name the templates in turn.",
            "",
            f"| measure | one template | {args.templates} templates | ratio |",
            "|---|---|---|---|",
            f"| warm claim p50, one at a time | {warm['serial_p50_ms']:.1f} ms | "
            f"{many['serial_p50_ms']:.1f} ms | "
            f"{many['serial_p50_ms'] / warm['serial_p50_ms']:.2f} |",
            f"| warm claim p99, one at a time | {warm['serial_p99_ms']:.1f} ms | "
            f"{many['serial_p99_ms']:.1f} ms | {ratio:.2f} |",
            f"| controller CPU per claim, one at a time | {warm['serial_cpu_ms']:.2f} ms | "
            f"{many['serial_cpu_ms']:.2f} ms | "
            f"{many['serial_cpu_ms'] / warm['serial_cpu_ms']:.2f} |",
            f"| claim p99 at concurrency {args.concurrency} | {warm['p99_ms']:.1f} ms | "
            f"{many['p99_ms']:.1f} ms | {many['p99_ms'] / warm['p99_ms']:.2f} |",
            f"| claims served warm | {warm['warm']:.0f} of {warm['sessions']:.0f} | "
            f"{many['warm']:.0f} of {many['sessions']:.0f} | |",
            f"| pool of {args.pool} from zero to ready | {warm['fill_s']:.1f} s | "
            f"{many['fill_s']:.1f} s | |",
        ]
    lines += [
        "",
        f"## Refill of a {args.refill}-pod pool from zero, by client rate limit",
        "",
        "Bound = (API calls made until the pool was ready - burst) / qps: the time the "
        "token bucket alone needs.",
        "",
        "| qps / burst | ready in | API calls (creates) | QPS bound | ready / bound |",
        "|---|---|---|---|---|",
    ]
    for r in refills:
        lines.append(
            f"| {r['qps']:g} / {r['burst']} | {r['ready_s']:.1f} s | {r['calls']} "
            f"({r['creates']}) | {r['bound_s']:.1f} s | "
            + (f"{r['ready_s'] / r['bound_s']:.2f} |" if r["bound_s"] >= 0.5 else "- |")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("kube_bench: needs wrk (apt-get install wrk)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=3700)
    parser.add_argument("--claims", type=int, default=3600)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument(
        "--serial", type=int, default=1000, help="claims made one at a time by wrk (>= 1)"
    )
    parser.add_argument("--qps", type=float, default=500.0, help="client QPS for part 1")
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--creates", type=int, default=20, help="maxConcurrentCreates, part 1")
    parser.add_argument("--refill", type=int, default=300)
    parser.add_argument("--refill-qps", default="20:40,100:200", help="qps:burst,...")
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--skip-claims", action="store_true")
    parser.add_argument(
        "--templates",
        type=int,
        default=1,
        help="also run part 1 with this many templates (the same pool in all, split "
        "evenly; claims name them in turn) and compare warm-claim latency",
    )
    parser.add_argument(
        "--max-total", type=int, default=0, help="maxTotalJobs (default pool + claims + conns)"
    )
    parser.add_argument(
        "--noop", type=float, default=0, help="seconds of /bench/noop at --concurrency (0: off)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="SIGKILL the controller, time its restart"
    )
    parser.add_argument(
        "--restarts", type=int, default=1, help="with --restart: how many (the median)"
    )
    parser.add_argument(
        "--restart-baseline",
        default="",
        help="with --restart: alternate restarts between this tree and --code's",
    )
    parser.add_argument(
        "--code", default="", help="run the controller from this tree (a baseline worktree)"
    )
    parser.add_argument(
        "--lease-ttl", default="", help="SANDBOX_LEADER_LEASE_TTL (default: the controller's)"
    )
    args = parser.parse_args()
    if args.templates > 1:
        args.pool -= args.pool % args.templates  # an even split: the same pool in both
    if args.code:
        global CODE
        CODE = Path(args.code).resolve()
    if args.restart_baseline:
        global BASELINE
        BASELINE = Path(args.restart_baseline).resolve()
    if args.lease_ttl:  # start_controller passes the environment on
        os.environ["SANDBOX_LEADER_LEASE_TTL"] = args.lease_ttl
    if not 1 <= args.serial <= args.claims:
        parser.error("--serial must be between 1 and --claims")

    async def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            warm = {} if args.skip_claims else await warm_claims(args, tmp / "warm")
            if args.templates > 1 and not args.skip_claims:
                many = await warm_claims(args, tmp / "templates", args.templates)
                print(json.dumps(many, indent=1), file=sys.stderr)
                warm["templates"] = many
            refills = []
            for i, spec in enumerate(args.refill_qps.split(",")):
                qps, burst = spec.split(":")
                refills.append(await refill(args, tmp / f"refill{i}", float(qps), int(burst)))
                print(json.dumps(refills[-1]), file=sys.stderr)
            return warm, refills

    warm, refills = asyncio.run(run())
    print(json.dumps(warm, indent=1), file=sys.stderr)
    if args.skip_claims:
        for r in refills:
            print(r)
        return
    text = render(args, warm, refills)
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / "kube.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
