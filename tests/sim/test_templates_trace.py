"""Traces that name templates: replayed each in its template's warm pool."""

from __future__ import annotations

import io

import pytest

from sandbox_controller.model import Outcome, TemplateLimits
from sandbox_controller.sim.simulate import Platform, Startup, simulate
from sandbox_controller.sim.trace import TraceError, read_trace, write_trace
from tests.scheduler.harness import limits_with

LIMITS = limits_with(
    max_total_jobs=4,
    max_sessions_per_user=2,
    templates=(TemplateLimits("py", 1), TemplateLimits("node", 1)),
)
TRACE = """time,event,user,thread,value,template
20,open,ann,t1,30,py
21,open,ben,t2,30,node
22,open,cat,t3,30,node
"""


def test_each_open_takes_a_warm_pod_of_its_template() -> None:
    events = read_trace(io.StringIO(TRACE))
    result = simulate(events, LIMITS, Startup(10.0), platform=Platform(), until=100.0)
    # One warm pod each: ann (py) and ben (node) are served warm; cat (node) finds
    # node's pod taken and waits for the refill, although py's pool has one again.
    assert result.requests == {Outcome.WARM: 2, Outcome.COLD: 1}


def test_a_trace_naming_an_unknown_template_is_refused() -> None:
    events = read_trace(io.StringIO(TRACE.replace(",node\n", ",gpu\n", 1)))
    with pytest.raises(TraceError, match="gpu"):
        simulate(events, LIMITS, Startup(10.0))


def test_a_trace_without_templates_is_written_as_before() -> None:
    events = read_trace(io.StringIO(TRACE))
    out = io.StringIO()
    write_trace(events, out)
    assert out.getvalue().splitlines()[0] == "time,event,user,thread,value,template"
    plain = [e.__class__(e.time, e.kind, e.user, e.thread, e.value) for e in events]
    out = io.StringIO()
    write_trace(plain, out)
    assert out.getvalue().splitlines()[0] == "time,event,user,thread,value"
