"""Resume (issue 20, part two): a suspended session with a 50 MB workspace, from
``POST /sessions`` for its thread to ``ready`` with its files restored, beside a warm
open and a cold open, p50/p95 over --runs each, for the file store and the S3 store.

    python benchmarks/resume_bench.py [--runs 20] [--size-mb 50] [--stores file,s3]

Each store gets its own ``sandbox-controller dev`` (controller and proxy, local backend:
each sandbox a real devsandbox process, SQLite), with a warm pool of 2 and suspension
on; the S3 store is moto's server in its own process (tests/s3server.py), over HTTP. A
run of the resume: open a thread, write --size-mb of random bytes (incompressible: the
worst case for the archive's gzip) into its workspace through the proxy, suspend it,
wait until the pool is warm again, then time ``POST /sessions`` for the thread until it
answers ``ready`` with ``resumed: true``; the file is checked byte for byte after. The
warm open is a new thread with the pool warm; the cold open a new thread with no warm
pool (a ``dev`` with SANDBOX_PREWARM_POOL_SIZE=0): both end at ``ready``, as the resume
does. Target: resume p50 within warm open p50 + 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script
from benchmarks.common import ROOT, TOKEN, TOKEN_SECRET, free_port, stop, wait_leader
from sandbox_controller.snapshots import S3Store
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, s3_server

MB = 1_000_000


@asynccontextmanager
async def dev(tmp: Path, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    port, proxy_port = free_port(), free_port()
    values = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SANDBOX_API_TOKEN": TOKEN,
        "SANDBOX_TOKEN_SECRET": TOKEN_SECRET,
        "SANDBOX_PORT": str(port),
        "SANDBOX_PROXY_PORT": str(proxy_port),
        "SANDBOX_STATE_DIR": str(tmp / "state"),
        "SANDBOX_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
        "SANDBOX_PREWARM_POOL_SIZE": "2",
        "SANDBOX_MAX_TOTAL_JOBS": "10",
        "SANDBOX_MAX_SESSIONS_PER_USER": "10",
        "SANDBOX_SNAPSHOT_TIMEOUT": "120s",
        "SANDBOX_LOG_LEVEL": "warning",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox_controller.cli", "dev"],
        env=values,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "dev.log").open("wb"),
        cwd=tmp,
    )
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=180.0,
        trust_env=False,
    )
    try:
        await wait_leader(client)
        yield client
    finally:
        await client.aclose()
        stop(proc)


async def warm(client: httpx.AsyncClient, count: int = 2) -> None:
    """Until the warm pool holds ``count`` pods."""
    for _ in range(6000):
        if (await client.get("/pool")).json()["pods"]["idle"] >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("the warm pool did not refill")


async def until_state(client: httpx.AsyncClient, session_id: str, state: str) -> None:
    for _ in range(12000):
        if (await client.get(f"/sessions/{session_id}")).json()["state"] == state:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{session_id} never {state}")


async def timed_open(client: httpx.AsyncClient, user: str, thread: str) -> tuple[float, Any]:
    started = time.perf_counter()
    response = await client.post(
        "/sessions", json={"user_id": user, "thread_id": thread, "wait_seconds": 120}
    )
    seconds = time.perf_counter() - started
    body = response.json()
    if response.status_code not in (200, 201) or body.get("state") != "ready":
        raise RuntimeError(f"open of {user}/{thread}: {response.status_code} {body}")
    return seconds, body


def auth(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['connect']['token']}"}


async def opens(client: httpx.AsyncClient, runs: int, tag: str) -> list[float]:
    """New threads, each timed to ready, each ended after."""
    seconds = []
    for i in range(runs):
        await warm(client, int((await client.get("/pool")).json()["prewarm"]["target"]))
        took, body = await timed_open(client, f"{tag}-{i}", "t")
        seconds.append(took)
        await client.delete(f"/sessions/{body['id']}")
    return seconds


async def resumes(client: httpx.AsyncClient, runs: int, size: int, tag: str) -> list[float]:
    proxy = httpx.AsyncClient(timeout=180.0, trust_env=False)
    seconds = []
    try:
        for i in range(runs):
            user = f"{tag}-{i}"
            await warm(client)
            _, session = await timed_open(client, user, "t")
            work = os.urandom(size)
            url = session["connect"]["url"] + "files/work.bin"
            put = await proxy.put(url, content=work, headers=auth(session))
            put.raise_for_status()
            response = await client.post(f"/sessions/{session['id']}/suspend")
            response.raise_for_status()
            await until_state(client, session["id"], "suspended")
            await warm(client)
            took, body = await timed_open(client, user, "t")
            if not body.get("resumed"):
                raise RuntimeError(f"not resumed: {body}")
            seconds.append(took)
            back = await proxy.get(url, headers=auth(body))
            if hashlib.sha256(back.content).digest() != hashlib.sha256(work).digest():
                raise RuntimeError("the workspace did not come back byte for byte")
            await client.delete(f"/sessions/{session['id']}")
    finally:
        await proxy.aclose()
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def bench(args: argparse.Namespace) -> list[tuple[str, str, list[float]]]:
    rows: list[tuple[str, str, list[float]]] = []
    size = args.size_mb * MB
    with tempfile.TemporaryDirectory(prefix="resume-bench-") as scratch:
        tmp = Path(scratch)
        (tmp / "cold").mkdir()
        async with dev(tmp / "cold", SANDBOX_PREWARM_POOL_SIZE="0") as client:
            rows.append(("-", "cold open", await opens(client, args.runs, "cold")))
        stores = args.stores.split(",")
        if "file" in stores:
            (tmp / "file").mkdir()
            store = (tmp / "file" / "archives").as_uri()
            async with dev(tmp / "file", SANDBOX_SNAPSHOT_STORE=store) as client:
                rows.append(("file", "warm open", await opens(client, args.runs, "warm")))
                rows.append(("file", "resume", await resumes(client, args.runs, size, "res")))
        if "s3" in stores:
            (tmp / "s3").mkdir()
            with s3_server() as server:
                s3 = S3Store(
                    "bench", "resume", endpoint_url=server.endpoint_url, region=REGION,
                    access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY,
                )  # fmt: skip
                await (await s3._s3()).create_bucket(Bucket="bench")
                await s3.close()
                env = {
                    "SANDBOX_SNAPSHOT_STORE": "s3://bench/resume",
                    "SANDBOX_SNAPSHOT_S3_ENDPOINT_URL": server.endpoint_url,
                    "SANDBOX_SNAPSHOT_S3_REGION": REGION,
                    "SANDBOX_SNAPSHOT_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
                    "SANDBOX_SNAPSHOT_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                }
                async with dev(tmp / "s3", **env) as client:
                    rows.append(("s3", "warm open", await opens(client, args.runs, "warm")))
                    rows.append(("s3", "resume", await resumes(client, args.runs, size, "res")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--stores", default="file,s3")
    args = parser.parse_args()
    rows = asyncio.run(bench(args))
    print(f"\n| store | path ({args.size_mb} MB workspace) | runs | p50 s | p95 s | mean s |")
    print("|---|---|---|---|---|---|")
    for store, path, seconds in rows:
        print(
            f"| {store} | {path} | {len(seconds)} | {percentile(seconds, 0.5):.3f} | "
            f"{percentile(seconds, 0.95):.3f} | {statistics.fmean(seconds):.3f} |"
        )
    by = {(store, path): seconds for store, path, seconds in rows}
    for store in args.stores.split(","):
        if (store, "resume") in by:
            resume = percentile(by[store, "resume"], 0.5)
            warm_open = percentile(by[store, "warm open"], 0.5)
            verdict = "met" if resume <= warm_open + 1.0 else "NOT met"
            print(
                f"{store}: resume p50 {resume:.3f}s vs warm open p50 {warm_open:.3f}s + 1 s: "
                f"target {verdict}"
            )


if __name__ == "__main__":
    main()
