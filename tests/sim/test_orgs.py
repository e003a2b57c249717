"""Traces of many orgs: the org and plan columns, and `simulate` and `plan --trace`
holding each org to its plan as the controller does."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sandbox_controller.cli import main
from sandbox_controller.model import Outcome, Plan
from sandbox_controller.sim.simulate import Startup, simulate
from sandbox_controller.sim.trace import EventKind, TraceError, TraceEvent, read_trace, write_trace
from tests.scheduler.harness import limits_with

PLANS = "plans:\n  - name: starter\n    max_pods_per_org: 2\n    sessions_per_minute: 3\n"

# Once the pool is warm, acme (starter) opens four threads in a minute: two are served, the third is past its
# cap, the fourth past its rate; globex (no plan) opens four and is served each time.
TRACE = """\
time,event,user,thread,value,org,plan
100,open,ann,t1,0,acme,starter
101,open,bob,t1,0,acme,starter
102,open,cyd,t1,0,acme,starter
103,close,ann,t1,deleted,acme,
104,open,dee,t1,0,acme,starter
105,open,eve,t1,0,acme,starter
106,open,ann,t1,0,globex,
107,open,bob,t1,0,globex,
108,open,cyd,t1,0,globex,
109,open,dee,t1,0,globex,
"""


def test_a_trace_of_orgs_round_trips_and_an_old_one_keeps_its_header() -> None:
    events = [
        TraceEvent(0.0, EventKind.OPEN, "u1", "t1", "30", "acme", "starter"),
        TraceEvent(5.0, EventKind.CLOSE, "u1", "t1", "deleted", "acme"),
    ]
    out = io.StringIO()
    assert write_trace(events, out) == 2
    assert out.getvalue().splitlines()[0] == "time,event,user,thread,value,org,plan"
    assert read_trace(io.StringIO(out.getvalue())) == events
    plain = io.StringIO()
    write_trace([TraceEvent(0.0, EventKind.OPEN, "u1", "t1")], plain)
    assert plain.getvalue().splitlines()[0] == "time,event,user,thread,value"


def test_a_row_of_the_wrong_width_is_refused_naming_the_line() -> None:
    text = "time,event,user,thread,value,org,plan\n0,open,u1,t1,30\n"
    with pytest.raises(TraceError, match="line 2: expected 7 fields, got 5"):
        read_trace(io.StringIO(text))


def test_the_simulator_holds_each_org_to_its_plan() -> None:
    limits = limits_with(
        prewarm_pool_size=8, max_total_jobs=20, plans=(Plan("starter", None, 2, 1.0, 3),)
    )
    result = simulate(read_trace(io.StringIO(TRACE)), limits, Startup(10.0, 10.0))
    assert result.requests[Outcome.ORG_LIMIT] == 1
    assert result.requests[Outcome.ORG_RATE] == 1
    assert result.requests[Outcome.WARM] == 7


def test_simulate_and_plan_read_the_plans_and_refuse_an_unknown_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, plans = tmp_path / "trace.csv", tmp_path / "plans.yaml"
    trace.write_text(TRACE)
    plans.write_text(PLANS)
    flags = ["--trace", str(trace), "--plans", str(plans), "--startup=10s", "--prewarm=8"]
    assert main(["simulate", *flags]) == 0
    out = capsys.readouterr().out
    assert "1 x 429 org_session_limit, 1 x 429 org_rate_limited" in out
    assert main(["plan", *flags[:-1]]) == 0
    assert main(["simulate", "--trace", str(trace), "--startup=10s"]) == 2
    assert "plan 'starter' is not in the plans file" in capsys.readouterr().err
