"""``trace``, ``simulate`` and ``plan --trace`` as an operator runs them, and the
picture ``--plot`` draws."""

from __future__ import annotations

import asyncio
import io
import re
import struct
import time
from pathlib import Path

import pytest
import yaml
from matplotlib import pyplot as plt

from sandbox_controller.cli import main
from sandbox_controller.model import (
    EndReason,
    Outcome,
    PodState,
    PrewarmPolicy,
    PrewarmSettings,
    Session,
    SessionState,
)
from sandbox_controller.sim.report import PLOT_DPI, PLOT_SIZE, draw, series
from sandbox_controller.sim.simulate import Startup, simulate
from sandbox_controller.sim.trace import SynthModel, read_trace, synth, write_trace
from sandbox_controller.store import Batch, Store
from tests.scheduler.harness import limits_with

from .test_simulate import TRACE

LIMIT_FLAGS = [
    "--prewarm=1",
    "--max-total-jobs=2",
    "--max-sessions-per-user=1",
    "--idle-after=60s",
    "--idle-timeout=10m",
    "--startup=10s",
]


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    return path


@pytest.fixture
def day_file(tmp_path: Path) -> Path:
    path = tmp_path / "day.csv"
    with path.open("w") as out:
        write_trace(synth(SynthModel(editors=30, seed=2)), out)
    return path


def test_simulate_reports_the_hand_made_traces_answers(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--trace", str(trace_file), *LIMIT_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "Warm-hit rate:        50.00%" in out
    assert "1 x 429 user_session_limit, 1 x 503 capacity_exhausted" in out
    assert "1 reclaimed, 0 idle timeouts" in out
    assert "Peak pods:            2" in out


def test_the_helm_values_file_gives_the_same_limits_as_the_flags(
    trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["simulate", "--trace", str(trace_file), *LIMIT_FLAGS])
    by_flags = capsys.readouterr().out
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "agentSandbox": {
                    "controller": {
                        "scaling": {
                            "prewarmPoolSize": 1,
                            "maxTotalJobs": 2,
                            "maxSessionsPerUser": 1,
                            "prewarm": {"policy": "static"},
                        },
                        "idleAfter": "60s",
                        "idleTimeout": "10m",
                    }
                }
            }
        )
    )
    args = ["simulate", "--trace", str(trace_file), "--values", str(values), "--startup=10s"]
    assert main(args) == 0
    assert capsys.readouterr().out == by_flags


def test_a_sweep_prints_one_row_per_static_size_and_one_for_adaptive(
    day_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--trace", str(day_file), "--max-total-jobs=100", "--sweep=prewarm=0..3"]
    assert main(args) == 0
    rows = capsys.readouterr().out.split("warm hit")[1].splitlines()[2:]
    assert [row.split()[0:3] for row in rows] == [
        ["static", "0", "0.00%"],
        ["static", "1", rows[1].split()[2]],
        ["static", "2", rows[2].split()[2]],
        ["static", "3", rows[3].split()[2]],
        ["adaptive", "1..20", rows[4].split()[2]],
        ["static", "5", "(given)"],  # the settings given (the default 5), shown in full above
    ]
    hit_rates = [float(re.findall(r"([\d.]+)%", row)[0]) for row in rows]
    assert hit_rates[0] == 0.0 and hit_rates[:4] == sorted(hit_rates[:4])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "/nonexistent.csv"], "cannot read /nonexistent.csv"),
        (["--startup", "soon"], "argument --startup: 'soon' is not a duration"),
        (["--sweep", "prewarm=5..1"], "must be increasing"),
        (["--sweep", "colour=1..2"], "expected prewarm=A..B"),
        (["--prewarm", "60"], "SANDBOX_PREWARM_POOL_SIZE must not exceed"),
        (["--prewarm-policy", "clever"], "invalid choice"),
    ],
)
def test_bad_simulate_input_is_exit_2_with_a_message(
    trace_file: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--trace" not in args:
        args = ["--trace", str(trace_file), *args]
    assert main(["simulate", *args]) == 2
    assert message in capsys.readouterr().err


def test_the_plot_is_a_png_of_the_expected_size_drawing_the_reported_series(
    day_file: Path, tmp_path: Path
) -> None:
    png, page = tmp_path / "run.png", tmp_path / "run.html"
    args = ["simulate", "--trace", str(day_file), "--prewarm-policy=adaptive"]
    assert main([*args, "--plot", str(png), "--html", str(page)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (PLOT_SIZE[0] * PLOT_DPI, PLOT_SIZE[1] * PLOT_DPI)
    html = page.read_text()
    # No URL to fetch (base64 has no ":", so "://" is a URL's, never the picture's).
    assert "data:image/png;base64," in html and "://" not in html

    # The same run in-process: what is drawn is the series the report sums up.
    limits = limits_with(prewarm=PrewarmSettings(PrewarmPolicy.ADAPTIVE))
    result = simulate(read_trace(io.StringIO(day_file.read_text())), limits, Startup(20, 60))
    fig = draw(result)
    try:
        assert len(fig.axes) == 2  # sessions above, the warm pool below
        drawn = {line.get_label(): list(line.get_ydata()) for ax in fig.axes for line in ax.lines}
        data_series = series(result)
        assert drawn["sessions wanting a sandbox (demand)"] == data_series["demand"]
        warm = drawn["warm pods, ready and unused (15-min average)"]
        # The drawn warm line, summed over time, is the reported idle-warm pod-hours.
        assert sum(warm) * 0.25 == pytest.approx(result.pod_hours(PodState.IDLE), rel=0.05)
        assert max(data_series["assigned"]) <= result.peak_pods
    finally:
        plt.close(fig)
    assert result.requests[Outcome.WARM] > 0


def test_trace_synth_writes_a_trace_simulate_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.csv"
    assert main(["trace", "synth", "--editors", "5", "--profile", "flat", "-o", str(out)]) == 0
    events = read_trace(io.StringIO(out.read_text()))
    assert events and events == synth(SynthModel(editors=5, profile="flat"))
    assert main(["trace", "synth", "--editors", "0"]) == 2
    assert "--editors" in capsys.readouterr().err


def test_plan_from_a_trace_recommends_values_that_meet_the_target(
    day_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--trace", str(day_file), "--startup=20s"]) == 0
    out = capsys.readouterr().out
    fragment = out.split("Paste into values.yaml:\n")[1]
    assert yaml.safe_load(fragment)["agentSandbox"]["controller"]["scaling"]["maxTotalJobs"]
    # Check the recommendation by simulating it again, as an operator would: the
    # fragment, pasted into a values file, is what the simulator reads.
    values = tmp_path / "values.yaml"
    values.write_text(fragment)
    args = ["simulate", "--trace", str(day_file), "--values", str(values), "--startup=20s"]
    assert main(args) == 0
    report = capsys.readouterr().out
    warm_hits = float(re.findall(r"Warm-hit rate: +([\d.]+)%", report)[0])
    assert warm_hits >= 99.0
    assert "0 x 503 capacity_exhausted" in report


def test_trace_export_writes_the_stores_sessions_as_csv(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/sandbox.db"
    now = time.time()

    async def fill() -> None:
        store = Store.open(url)
        await store.migrate()
        ended = Session("s1", "ann", "a", SessionState.ENDED, now - 600, now - 500)
        ended.end_reason, ended.ended_at = EndReason.DELETED, now - 400
        live = Session("s2", "ben", "b", SessionState.READY, now - 300, now - 300)
        await store.write(Batch(sessions=[ended, live]), None)
        await store.close()

    asyncio.run(fill())
    out = tmp_path / "trace.csv"
    assert main(["trace", "export", "--database-url", url, "--since", "1h", "-o", str(out)]) == 0
    events = read_trace(io.StringIO(out.read_text()))
    assert [(round(e.time), e.kind.value, e.value) for e in events] == [
        (0, "open", ""),
        (100, "activity", ""),
        (200, "close", "deleted"),
        (300, "open", ""),
    ]
    assert {e.user for e in events}.isdisjoint({"ann", "ben"})
