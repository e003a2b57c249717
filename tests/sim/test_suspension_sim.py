"""Suspension in a replay: the real Pool suspends idle sessions, traffic on a suspended
thread wakes it, archives are counted while kept; the pod-hours saved and the resumes
it costs come out as worked out by hand."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sandbox_controller.model import EndReason, PodState
from sandbox_controller.sim.simulate import Platform, Startup, simulate
from sandbox_controller.sim.suspension import ArchivePlatform
from sandbox_controller.sim.trace import read_trace
from tests.scheduler.harness import limits_with

ENDING = limits_with(prewarm_pool_size=1, max_total_jobs=4, idle_after=60, idle_timeout=3600)
SUSPENDING = replace(ENDING, snapshots=True, idle_action="suspend", idle_timeout=600)
# 100 MiB at 100 MiB/s and 0.2 s a call: each snapshot and restore takes 1.2 s.
ARCHIVES = ArchivePlatform(100 * 2**20, 100 * 2**20, 0.2)
# ann works, leaves for lunch (3000 s without traffic), comes back, closes at 5000.
# ben opens and never comes back.
TRACE = """time,event,user,thread,value
20,open,ann,t1,30
100,activity,ann,t1,
3700,activity,ann,t1,
5000,close,ann,t1,deleted
30,open,ben,t2,30
"""


def replay(limits: object) -> object:
    events = read_trace(io.StringIO(TRACE))
    return simulate(
        events, limits, Startup(10.0), platform=Platform(), archives=ARCHIVES, until=7200
    )


def test_idle_sessions_are_suspended_and_traffic_wakes_them() -> None:
    result = replay(SUSPENDING)
    s = result.suspension
    assert s is not None
    # ann: quiet from 100, suspended at 700 (+1.2 s to stream it out), woken by traffic
    # at 3700 and restored into the warm pod by 3701.2 (her idle clock starts there),
    # quiet again and suspended at 4301.2, closed at 5000 (her archive deleted). ben:
    # waits 0.1 s for the refill (ready 30.1), suspended at 630.1, kept to the end.
    assert (s.suspends, s.resumes, s.wakes, s.restore_failures) == (3, 1, 1, 0)
    assert s.resume_seconds == pytest.approx([1.2])
    assert s.peak_archives == 2 and len(s.archives) == 1
    assert result.ended == {EndReason.DELETED: 1}  # nobody lost their work
    # Assigned: ann 20..701.2 and 3700..4302.4, ben 30.1..631.3.
    assert result.pod_hours(PodState.ASSIGNED) == pytest.approx(
        (681.2 + 602.4 + 601.2) / 3600, abs=1e-6
    )
    # Stored: ben's from 631.3 to the end; ann's 701.2..3701.2 and 4302.4..5000.
    assert s.archive_seconds == pytest.approx((7200 - 631.3) + 3000 + 697.6, abs=1e-6)
    assert s.gib_hours == pytest.approx(s.archive_seconds * 100 / 1024 / 3600)


def test_without_suspension_the_same_trace_holds_the_pods_and_loses_bens_work() -> None:
    result = replay(ENDING)
    assert result.suspension is None
    assert result.ended == {EndReason.DELETED: 1, EndReason.IDLE_TIMEOUT: 1}
    # ann holds hers from 20 to 5000 (no gap reaches the hour); ben's ends at 3630.
    assert result.pod_hours(PodState.ASSIGNED) == pytest.approx((4980 + 3600) / 3600, abs=1e-3)


def test_simulate_reports_the_pod_hours_saved_and_the_resumes_it_costs(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    done = subprocess.run(
        [
            sys.executable, "-m", "sandbox_controller.cli", "simulate", "--trace", str(trace),
            "--prewarm", "1", "--idle-timeout", "1h", "--idle-after", "1m",
            "--suspend-after", "10m", "--archive-size", "100Mi", "--startup", "10s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"SANDBOX_API_TOKEN": "x" * 24, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "With suspension after 10 min idle (as given: idle sessions end after 60 min)" in out
    assert "Pod-hours saved:" in out and "Resumes it costs:   1 (1 woken by traffic)" in out
    assert "peak 2 archives, 0.20 GiB" in out


def test_a_bad_archive_size_is_refused_with_a_message(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    done = subprocess.run(
        [sys.executable, "-m", "sandbox_controller.cli", "simulate", "--trace", str(trace),
         "--suspend-after", "10m", "--archive-size", "lots"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"SANDBOX_API_TOKEN": "x" * 24, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "--archive-size" in done.stderr
