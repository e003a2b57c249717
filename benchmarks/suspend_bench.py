"""Snapshot streaming (issue 20, part one): store throughput, and the controller side's
memory while a 500 MB archive streams through take_snapshot and restore_snapshot.

    python benchmarks/suspend_bench.py [--size-mb 500] [--stores file,s3] [--encoding identity]

This process plays the controller: it calls a real devsandbox process's snapshot hook
(its workspace: ``--size-mb`` of random bytes in five files), streams the answer into
the store, then streams the archive into a second devsandbox with an empty workspace,
and checks that the files came back byte for byte. The stores: FileStore in a scratch
directory and S3Store on moto's server in its own process (tests/s3server.py), over HTTP.

Memory (each store in a fresh process): the RSS is sampled every 10 ms from a thread (and its kernel high-water
mark, reset before each step), after a small warm-up round trip; growth is the peak
over the RSS before the step. The baseline, in the same run: the same snapshot answer
read whole before it is stored (``response.aread()``), what the streaming avoids.
Throughput beside a plain file copy of the workspace on the same disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox_controller.snapshots import (  # noqa: E402
    FileStore,
    S3Store,
    SnapshotStore,
    restore_snapshot,
    take_snapshot,
)
from tests.s3server import (  # noqa: E402
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    s3_server,
)

SECRET = "bench-claim-secret"
MIB = 1024 * 1024
TIMEOUT = 600.0


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


class RssPeak:
    """This process's peak RSS (MiB) over a step, sampled from a thread so that a busy
    event loop does not hide a peak; the kernel's high-water mark is reset and read too."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _status("VmRSS"))

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        gc.collect()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
        self.before = _status("VmRSS")
        self.peak = self.before
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self._stop.clear()
            self.peak = max(self.peak, _status("VmHWM"))

    @property
    def growth(self) -> float:
        return self.peak - self.before


@contextlib.asynccontextmanager
async def devsandbox(workdir: Path, encoding: str) -> AsyncIterator[str]:
    env = os.environ | {"SANDBOX_CLAIM_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sandbox_controller.devsandbox", "--port", "0",
        "--workdir", str(workdir), "--snapshot-encoding", encoding,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        yield line.split()[1]
    finally:
        proc.terminate()
        await proc.wait()


def make_workspace(root: Path, size_mb: int) -> None:
    root.mkdir(parents=True)
    files = 5
    for i in range(files):
        with (root / f"part-{i}.bin").open("wb") as out:
            left = size_mb * MIB // files
            while left:
                piece = os.urandom(min(left, 4 * MIB))
                out.write(piece)
                left -= len(piece)
    (root / "notes.md").write_text("back after lunch\n")


def digest(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hashed = hashlib.sha256()
            with path.open("rb") as f:
                while block := f.read(4 * MIB):
                    hashed.update(block)
            found[path.relative_to(root).as_posix()] = hashed.hexdigest()
    return found


async def timed(step: Callable[[], Awaitable[Any]], rss: RssPeak) -> tuple[Any, float]:
    with rss.watch():
        start = time.perf_counter()
        result = await step()
        return result, time.perf_counter() - start


async def source(size: int, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    piece = os.urandom(chunk)
    sent = 0
    while sent < size:
        yield piece[: size - sent]
        sent += len(piece)


async def drain(chunks: AsyncIterator[bytes]) -> int:
    return sum([len(c) async for c in chunks])


async def bench_store(
    name: str, store: SnapshotStore, args: argparse.Namespace, work: Path, rss: RssPeak
) -> list[tuple[str, str, float, float, float]]:
    """(store, step, seconds, MB/s, RSS growth MiB) for each step."""
    rows = []
    size = args.size_mb * MIB
    mb = size / 1e6
    http = httpx.AsyncClient(trust_env=False)
    workspace = work / "workspace"
    small = work / f"small-{name}"
    make_workspace(small, 1)
    # Warm-up: code paths, the store's client and its connection pool.
    async with devsandbox(small, args.encoding) as address:
        await take_snapshot(
            http, address, SECRET, store, "warm/1.tar", max_bytes=size * 2, timeout=TIMEOUT
        )
        await restore_snapshot(http, address, SECRET, store, "warm/1.tar", timeout=TIMEOUT)
    await drain(store.get("warm/1.tar"))

    key = "bench/1.tar"
    async with devsandbox(workspace, args.encoding) as address:
        stored, seconds = await timed(
            lambda: take_snapshot(
                http, address, SECRET, store, key, max_bytes=size * 2, timeout=TIMEOUT
            ),
            rss,
        )
    rows.append(
        (
            name,
            f"take_snapshot ({stored / 1e6:,.0f} MB archive)",
            seconds,
            stored / 1e6 / seconds,
            rss.growth,
        )
    )
    restored = work / f"restored-{name}"
    restored.mkdir()
    async with devsandbox(restored, args.encoding) as address:
        _, seconds = await timed(
            lambda: restore_snapshot(http, address, SECRET, store, key, timeout=TIMEOUT), rss
        )
    rows.append((name, "restore_snapshot", seconds, stored / 1e6 / seconds, rss.growth))
    await store.delete(key)  # moto keeps objects in its memory: one at a time
    same = digest(restored) == digest(workspace)
    print(f"{name}: restored workspace identical to the original: {same}", flush=True)
    if not same:
        raise SystemExit("the restored workspace differs")
    shutil.rmtree(restored)

    _, seconds = await timed(
        lambda: store.put("bench/2.tar", source(size), max_bytes=size * 2), rss
    )
    rows.append((name, "store put (64 KiB chunks)", seconds, mb / seconds, rss.growth))
    _, seconds = await timed(lambda: drain(store.get("bench/2.tar")), rss)
    rows.append((name, "store get", seconds, mb / seconds, rss.growth))
    await store.delete("bench/2.tar")

    if args.baseline:

        async def buffered() -> None:
            async with devsandbox(workspace, args.encoding) as address:
                url = f"http://{address}/_sandbox/snapshot"
                headers = {"authorization": f"Bearer {SECRET}", "accept-encoding": "identity"}
                answer = await http.post(url, headers=headers, timeout=TIMEOUT)
                whole = answer.content

                async def once() -> AsyncIterator[bytes]:
                    yield whole

                await store.put("bench/3.tar", once(), max_bytes=size * 2)

        _, seconds = await timed(buffered, rss)
        rows.append(
            (
                name,
                "baseline: answer read whole, then stored",
                seconds,
                stored / 1e6 / seconds,
                rss.growth,
            )
        )
    for key in ("warm/1.tar", "bench/1.tar", "bench/2.tar", "bench/3.tar"):
        await store.delete(key)
    await http.aclose()
    return rows


async def run(args: argparse.Namespace) -> None:
    rss = RssPeak()
    with tempfile.TemporaryDirectory(prefix="suspend-bench-") as scratch:
        work = Path(scratch)
        print(f"writing a {args.size_mb} MB workspace...", flush=True)
        make_workspace(work / "workspace", args.size_mb)
        start = time.perf_counter()
        shutil.copyfile(work / "workspace" / "part-0.bin", work / "copy.bin")
        copy_seconds = (time.perf_counter() - start) * 5  # five equal files
        (work / "copy.bin").unlink()
        rows: list[tuple[str, str, float, float, float]] = [
            (
                "disk",
                "plain file copy of the workspace (estimate from one fifth)",
                copy_seconds,
                args.size_mb * MIB / 1e6 / copy_seconds,
                0.0,
            )
        ]
        stores = args.stores.split(",")
        if "file" in stores:
            store = FileStore(work / "archives")
            rows += await bench_store("file", store, args, work, rss)
        if "s3" in stores:
            with s3_server() as server:
                s3 = S3Store(
                    "bench", "archives", endpoint_url=server.endpoint_url, region=REGION,
                    access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY,
                )  # fmt: skip
                client = await s3._s3()
                await client.create_bucket(Bucket="bench")
                rows += await bench_store("s3", s3, args, work, rss)
                await s3.close()
    print()
    print(
        f"| store | step ({args.size_mb} MB workspace, encoding {args.encoding}) | seconds | MB/s | RSS growth, MiB |"
    )
    print("|---|---|---|---|---|")
    for store_name, step, seconds, rate, growth in rows:
        print(f"| {store_name} | {step} | {seconds:.2f} | {rate:,.0f} | {growth:.1f} |")
    worst = max(g for s, step, *_, g in rows if s != "disk" and not step.startswith("baseline"))
    print(f"\nlargest RSS growth while streaming: {worst:.1f} MiB (target < 20 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--stores", default="file,s3")
    parser.add_argument("--encoding", choices=["identity", "gzip"], default="identity")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    args = parser.parse_args()
    stores = args.stores.split(",")
    if len(stores) == 1:
        asyncio.run(run(args))
        return
    # Each store in a fresh process: memory one store's run freed must not hide the
    # next one's growth.
    for store in stores:
        command = [sys.executable, __file__, *sys.argv[1:], "--stores", store]
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
