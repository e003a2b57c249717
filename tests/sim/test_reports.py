"""What an operator reads from ``trace synth --help``, ``simulate --sweep`` and ``plan
--trace``: units on every number, the settings they gave shown in full, which prewarm
setting applies, and the headroom left over the simulated peak."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from sandbox_controller.cli import main
from sandbox_controller.sim.trace import SynthModel, synth, write_trace

# Each synth flag, and what its help must say about its unit or range.
SYNTH_UNITS = {
    "--editors": "count",
    "--days": "days",
    "--profile": "office-hours",
    "--threads-per-day": "per editor per day",
    "--session-median": "20m",
    "--session-sigma": "no unit",
    "--gap-mean": "2m",
    "--close-share": "0..1",
    "--wait-seconds": "seconds",
    "--seed": "same seed",
    "--output": "standard output",
}


@pytest.fixture(scope="module")
def day_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("day") / "day.csv"
    with path.open("w") as out:
        write_trace(synth(SynthModel(editors=30, seed=2)), out)
    return path


def _values(tmp_path: Path, scaling: dict[str, object]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"agentSandbox": {"controller": {"scaling": scaling}}}))
    return path


def test_every_trace_synth_flag_has_help_with_its_unit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["trace", "synth", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    options = text.split("options:")[1]
    for flag, unit in SYNTH_UNITS.items():
        after = options.split(f" {flag}", 1)[1]
        described = re.split(r" --?[a-z]", after, maxsplit=1)[0]  # up to the next flag
        assert unit in described, f"{flag}: no {unit!r} in its help"
    assert "default 1200s)" in options and "default 120s)" in options


def test_a_sweep_with_values_prints_the_block_of_the_values_given(
    day_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = _values(tmp_path, {"prewarmPoolSize": 2, "maxTotalJobs": 100})
    args = ["simulate", "--trace", str(day_file), "--values", str(values), "--sweep=prewarm=0..3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    block, sweep = out.split("\n\n", 1)
    assert "Prewarm:              static 2 (maxTotalJobs 100)" in block
    given = [row for row in sweep.splitlines() if "(given)" in row]
    assert len(given) == 1 and given[0].split()[:2] == ["static", "2"]
    block_rate = re.findall(r"Warm-hit rate: +([\d.]+%)", block)[0]
    assert given[0].split()[3] == block_rate  # the row and the block are the same run


def test_settings_outside_the_sweep_are_run_too_and_shown_in_full(
    day_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = _values(tmp_path, {"prewarmPoolSize": 6, "maxTotalJobs": 100})
    args = ["simulate", "--trace", str(day_file), "--values", str(values), "--sweep=prewarm=0..1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Prewarm:              static 6 (maxTotalJobs 100)" in out
    rows = out.split("(setting)")[1].splitlines()[1:]
    assert [" ".join(r.split()[:2]) for r in rows] == [
        "static 0",
        "static 1",
        "adaptive 1..20",
        "static 6",
    ]


def test_the_sweep_table_puts_a_unit_under_every_heading(
    day_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--trace", str(day_file), "--max-total-jobs=100", "--sweep=prewarm=0..1"]
    assert main(args) == 0
    lines = capsys.readouterr().out.split("\n\n", 1)[1].splitlines()
    headings, units = lines[0].split(), lines[1].split()
    assert headings[:3] == ["prewarm", "warm", "hit"]
    assert units == [
        "(setting)",
        "(%",
        "asked)",
        "(s)",
        "(s)",
        "(s)",
        "(count)",
        "(count)",
        "(count)",
        "(count)",
        "(pods)",
        "(pod-h)",
        "(pod-h)",
    ]


def _plan(day_file: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["plan", "--trace", str(day_file), "--startup=20s", *extra]) == 0
    return capsys.readouterr().out


def test_plan_says_which_prewarm_setting_applies_and_the_headroom_it_leaves(
    day_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _plan(day_file, capsys, "--headroom=0.5")
    peak = int(re.findall(r"Recommended: .* peak (\d+) pods\)", out)[0])
    scaling = yaml.safe_load(out.split("Paste into values.yaml:\n")[1])["agentSandbox"][
        "controller"
    ]["scaling"]
    cap = scaling["maxTotalJobs"]
    assert cap == math.ceil(peak * 1.5)
    assert f"maxTotalJobs {cap} = {peak} pods (the simulated peak) + {cap - peak} pods of " in out
    assert "(50%, --headroom)" in out
    policy = scaling["prewarm"]["policy"]
    assert f"prewarm.policy {policy} applies" in out
    if policy == "adaptive":
        # No prewarmPoolSize beside an adaptive policy: it would not be used.
        assert "prewarmPoolSize" not in scaling
        assert "prewarmPoolSize is not used" in out
    else:
        assert scaling["prewarmPoolSize"] >= 1 and "min/max are not used" in out


def test_plan_leaves_a_quarter_of_headroom_unless_told(
    day_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _plan(day_file, capsys)
    peak = int(re.findall(r"Recommended: .* peak (\d+) pods\)", out)[0])
    assert f"maxTotalJobs {math.ceil(peak * 1.25)} = {peak} pods" in out
    assert "(25%, --headroom)" in out


def test_the_plot_draws_the_cap_and_demand_over_the_assigned_pods(day_file: Path) -> None:
    from matplotlib import pyplot as plt

    from sandbox_controller.sim.report import draw
    from sandbox_controller.sim.simulate import Startup, simulate
    from sandbox_controller.sim.trace import read_trace
    from tests.scheduler.harness import limits_with

    # A cap the day reaches, so sessions wait and some are refused.
    result = simulate(read_trace(day_file.open()), limits_with(max_total_jobs=20), Startup(20))
    fig = draw(result)
    try:
        top, bottom = fig.axes
        lines = {line.get_label(): line for line in top.lines}
        cap = lines["maxTotalJobs cap (20 pods)"]
        assert list(cap.get_ydata()) == [20, 20]
        demand = lines["sessions wanting a sandbox (demand)"]
        assigned = next(c for c in top.collections if c.get_label() == "pods assigned to sessions")
        assert demand.get_zorder() > assigned.get_zorder()  # drawn above, never hidden
        assert max(demand.get_ydata()) > 20  # demand beyond the cap shows as waiting
        legend = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
        assert "sessions waiting for a pod" in legend
        assert "503 refused: cap reached" in legend
        assert top.get_ylabel() == "sessions or pods (count)"
        assert bottom.get_xlabel() == "time since the trace's start (hours)"
        # The lower panel is averaged over 15 minutes: four steps an hour, not one per event.
        warm = bottom.lines[0]
        assert len(warm.get_ydata()) == math.ceil(result.duration / 900) < len(result.samples) / 10
    finally:
        plt.close(fig)
