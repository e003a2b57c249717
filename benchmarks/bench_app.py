"""The controller app plus two ceiling endpoints, for claim_bench.py only.

``/bench/noop`` validates the same body and answers: the cost of HTTP + FastAPI alone.
``/bench/insert`` also inserts one row and commits: the cost of one durable write.
With BENCH_PROFILE=DIR, ``/bench/profile/start`` and ``/bench/profile/stop?name=N``
take a pyinstrument profile of what happens in between, written to DIR/N.txt.
Run by uvicorn as a factory: ``uvicorn --factory benchmarks.bench_app:build``. uvicorn's
CLI runs the app's lifespan, so the app gets one here that starts and stops the
controller, as ControllerProcess does around serving it.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from sandbox_controller.api import create_app
from sandbox_controller.api.schemas import CreateSession
from sandbox_controller.config import load_settings
from sandbox_controller.console import Console
from sandbox_controller.controller import Controller
from sandbox_controller.serving import configure_logging, tune_gc

bench_rows = sa.Table(
    "bench_rows",
    sa.MetaData(),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(253), nullable=False),
    sa.Column("thread_id", sa.String(253), nullable=False),
)


def gc_report(pauses: list[tuple[int, float, int]]) -> str:
    """Collections by generation during a profile window: count, total, longest (ms),
    and the objects the collector tracks at the end (gc.freeze's are not counted)."""
    lines = []
    for generation in range(3):
        times = [(s * 1000, n) for g, s, n in pauses if g == generation]
        if times:
            lines.append(
                f"gen{generation}: {len(times)} collections, "
                f"{sum(t for t, _ in times):.1f} ms total, each (ms, objects collected): "
                + ", ".join(f"{t:.1f} {n}" for t, n in times)
            )
    lines.append(f"tracked objects {len(gc.get_objects())}, frozen {gc.get_freeze_count()}")
    return "\n".join(lines) + "\n"


def build() -> FastAPI:
    tune_gc()  # as `sandbox-controller serve` does
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)  # so does this
    controller = Controller(settings)
    app = create_app(controller)
    # As ControllerProcess does: the console on the same app (SANDBOX_CONSOLE).
    console = Console(app, controller) if settings.console else None
    store = controller.store

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await controller.startup()
        if console is not None:
            console.start()
        try:
            yield
        finally:
            if console is not None:
                await console.stop()
            await controller.shutdown()

    app.router.lifespan_context = lifespan

    @app.post("/bench/noop", status_code=201)
    async def noop(body: CreateSession) -> Response:
        return JSONResponse({"user_id": body.user_id, "thread_id": body.thread_id}, 201)

    @app.post("/bench/insert", status_code=201)
    async def insert(body: CreateSession) -> Response:
        row = {"id": uuid.uuid4().hex, "user_id": body.user_id, "thread_id": body.thread_id}
        # The store's own path to the database; claim_bench.py created the table.
        await store.run(lambda conn: conn.execute(bench_rows.insert().values(**row)))
        return JSONResponse({"user_id": body.user_id, "thread_id": body.thread_id}, 201)

    if profile := os.environ.get("BENCH_PROFILE"):
        # A pyinstrument window around one phase of a benchmark (kube_bench.py): the
        # phase's own cost, not the whole run's (a whole run takes GBs of samples).
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        # BENCH_GC_ONLY: the collector's pauses alone (the profiler's own records are
        # many tracked objects: they would trigger collections of their own).
        gc_only = bool(os.environ.get("BENCH_GC_ONLY"))
        # BENCH_PYSPY: py-spy (CPU samples, raw stacks) instead of pyinstrument.
        spy = bool(os.environ.get("BENCH_PYSPY"))
        spies: list[subprocess.Popen[bytes]] = []
        # (generation, seconds, objects collected) of each collection
        pauses: list[tuple[int, float, int]] = []
        gc_started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                pause = time.perf_counter() - gc_started[0]
                pauses.append((info["generation"], pause, info["collected"]))

        gc.callbacks.append(on_gc)

        @app.post("/bench/profile/start", status_code=204)
        async def profile_start() -> Response:
            profiler.reset()
            pauses.clear()
            if os.environ.get("BENCH_GARBAGE"):  # what the window leaves to the collector
                gc.collect()
                gc.set_debug(gc.DEBUG_SAVEALL)
            if spy:  # py-spy: on-CPU samples only, and greenlets' frames where they are
                out = Path(profile, f"spy-{len(spies)}.txt")
                command = ["py-spy", "record", "-p", str(os.getpid()), "-r", "500"]
                command += ["--format", "raw", "-o", str(out), "--nonblocking"]
                spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
            elif not gc_only:
                profiler.start()
            return Response(status_code=204)

        @app.post("/bench/profile/stop", status_code=204)
        async def profile_stop(name: str) -> Response:
            if spies:
                spies[-1].send_signal(signal.SIGINT)
                spies[-1].wait()
                Path(profile, f"spy-{len(spies) - 1}.txt").rename(Path(profile, f"{name}-spy.txt"))
            elif not gc_only:
                profiler.stop()
                Path(profile, f"{name}.txt").write_text(profiler.output_text(show_all=False))
                if profiler.last_session is not None:  # pyinstrument --load N.pyisession
                    profiler.last_session.save(str(Path(profile, f"{name}.pyisession")))
            Path(profile, f"{name}-gc.txt").write_text(gc_report(pauses))
            if os.environ.get("BENCH_GARBAGE"):
                gc.collect()
                kinds = Counter(type(o).__qualname__ for o in gc.garbage)
                gc.set_debug(0)
                gc.garbage.clear()
                Path(profile, f"{name}-garbage.txt").write_text(
                    "".join(f"{n} {k}\n" for k, n in kinds.most_common(60))
                )
            return Response(status_code=204)

    return app
