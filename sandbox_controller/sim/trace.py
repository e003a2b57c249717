"""Traces of editor traffic: the CSV format, reading and writing it, and a synthetic day.

A trace is CSV with a header and one row per session event, in time order::

    time,event,user,thread,value
    0.000,open,u-3f2a9c0d11e4,t-8c1b2e4f0a77,30
    42.500,activity,u-3f2a9c0d11e4,t-8c1b2e4f0a77,
    1800.000,close,u-3f2a9c0d11e4,t-8c1b2e4f0a77,deleted

- ``time``: seconds from the start of the trace.
- ``open``: POST /sessions for the thread; ``value`` is ``wait_seconds`` (empty: 30).
- ``activity``: traffic or a touch on the thread's session at that moment.
- ``close``: the session ended; ``value`` is the recorded end reason. Only ``deleted``
  (the editor closed the thread) is replayed: timeouts and reclaims are the simulated
  controller's own decisions, made again from the activity.

A trace of many orgs has two more columns, ``org`` and ``plan`` (header
``time,event,user,thread,value,org,plan``): the org of the thread ('' for none) and, on
``open``, the plan it was opened under ('' for the deployment's defaults). A thread is
then one user's within one org, as in the controller (README "Orgs and plans").
A ``template`` column, after those or alone, is optional too: the sandbox template an
``open`` asks for (empty: the default one). A trace without these columns is read, and
written, as before orgs and templates.

The simulator (simulate.py) replays it through the real scheduler.
"""

from __future__ import annotations

import csv
import enum
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

HEADER = ("time", "event", "user", "thread", "value")
TENANT_COLUMNS = ("org", "plan")
TEMPLATE_COLUMNS = ("template",)
# Every header a trace may have: the five columns, then orgs', then templates'.
HEADERS = (
    HEADER,
    (*HEADER, *TENANT_COLUMNS),
    (*HEADER, *TEMPLATE_COLUMNS),
    (*HEADER, *TENANT_COLUMNS, *TEMPLATE_COLUMNS),
)
DEFAULT_WAIT = 30.0
DAY = 86400.0


class TraceError(Exception):
    """A trace that cannot be read; the message names the line."""


class EventKind(enum.StrEnum):
    OPEN = "open"
    ACTIVITY = "activity"
    CLOSE = "close"


@dataclass(frozen=True, order=True)
class TraceEvent:
    time: float
    kind: EventKind
    user: str
    thread: str
    value: str = ""
    org: str = ""
    plan: str = ""
    template: str = ""  # open: the template asked for ("": the default one)

    @property
    def wait_seconds(self) -> float:
        return float(self.value) if self.value else DEFAULT_WAIT


def write_trace(events: Iterable[TraceEvent], out: TextIO) -> int:
    """The trace as CSV; with the org and plan columns, and the template column, only
    if some event has them."""
    events = list(events)
    tenants = any(e.org or e.plan for e in events)
    templated = any(e.template for e in events)
    header = (
        *HEADER,
        *(TENANT_COLUMNS if tenants else ()),
        *(TEMPLATE_COLUMNS if templated else ()),
    )
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for event in events:
        row = [f"{event.time:.3f}", event.kind.value, event.user, event.thread, event.value]
        if tenants:
            row += [event.org, event.plan]
        if templated:
            row.append(event.template)
        writer.writerow(row)
    return len(events)


def read_trace(source: TextIO) -> list[TraceEvent]:
    """Every event of a trace, checked, in time order."""
    reader = csv.reader(source)
    header = next(reader, None)
    columns = tuple(h.strip() for h in header) if header is not None else ()
    if columns not in HEADERS:
        raise TraceError(f"line 1: expected the header {','.join(HEADER)}[,org,plan][,template]")
    events = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        events.append(_parse_row(row, line, columns))
    events.sort(key=lambda e: e.time)  # stable: same-time events keep their order
    return events


def _parse_row(row: list[str], line: int, columns: tuple[str, ...] = HEADER) -> TraceEvent:
    if len(row) != len(columns):
        raise TraceError(f"line {line}: expected {len(columns)} fields, got {len(row)}")
    time_text, kind_text, user, thread, value, *rest = (field.strip() for field in row)
    extra = dict(zip(columns[len(HEADER) :], rest, strict=True))
    org, plan, template = extra.get("org", ""), extra.get("plan", ""), extra.get("template", "")
    try:
        time = float(time_text)
    except ValueError:
        raise TraceError(f"line {line}: time {time_text!r} is not a number") from None
    if not math.isfinite(time) or time < 0:
        raise TraceError(f"line {line}: time must be a number of seconds >= 0")
    try:
        kind = EventKind(kind_text)
    except ValueError:
        kinds = ", ".join(k.value for k in EventKind)
        raise TraceError(f"line {line}: event {kind_text!r} is not one of {kinds}") from None
    if not user or not thread:
        raise TraceError(f"line {line}: user and thread must not be empty")
    if kind is EventKind.OPEN and value:
        try:
            wait = float(value)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= 120:
            raise TraceError(f"line {line}: wait_seconds {value!r} must be 0..120")
    return TraceEvent(time, kind, user, thread, value, org, plan, template)


# ------------------------------------------------------------------ synthesis


@dataclass(frozen=True)
class Profile:
    """A day's shape: the share of a day's new threads that arrive in each hour."""

    name: str
    hourly: tuple[float, ...]  # 24 relative weights

    def weight(self, hour: int) -> float:
        return self.hourly[hour % 24] / sum(self.hourly)


PROFILES = {
    # Working hours 9-18 with a lunch dip, a little early and late work, quiet nights.
    "office-hours": Profile(
        "office-hours",
        (
            0.1,
            0.05,
            0.05,
            0.05,
            0.05,
            0.1,
            0.3,
            1,
            3,
            8,
            10,
            10,
            6,
            8,
            10,
            10,
            8,
            4,
            2,
            1,
            0.6,
            0.4,
            0.2,
            0.1,
        ),
    ),
    # Round the clock: the same rate every hour.
    "flat": Profile("flat", (1.0,) * 24),
}


@dataclass(frozen=True)
class SynthModel:
    """The documented model behind ``trace synth``.

    Each editor opens ``threads_per_day`` new agent threads a day on average. Arrivals
    are Poisson, with the rate following the profile hour by hour. A session lasts a
    log-normal time (median ``session_median``, spread ``session_sigma``), during which
    the editor is active in bursts separated by exponential idle gaps (mean
    ``gap_mean``); ``close_share`` of sessions are closed by the editor at the end, the
    rest are abandoned and left to the idle timeout.
    """

    editors: int = 200
    days: float = 1.0
    profile: str = "office-hours"
    threads_per_day: float = 8.0
    session_median: float = 1200.0
    session_sigma: float = 0.8
    gap_mean: float = 120.0
    close_share: float = 0.7
    wait_seconds: float = 30.0
    seed: int = 1


def synth(model: SynthModel) -> list[TraceEvent]:
    """A synthetic trace, the same for the same model and seed."""
    if model.profile not in PROFILES:
        raise TraceError(f"unknown profile {model.profile!r}: one of {', '.join(PROFILES)}")
    profile = PROFILES[model.profile]
    rng = random.Random(model.seed)
    end = model.days * DAY
    events: list[TraceEvent] = []
    per_hour = model.editors * model.threads_per_day
    serial = 0
    hour_start = 0.0
    while hour_start < end:
        rate = per_hour * profile.weight(int(hour_start // 3600)) / 3600.0
        t = hour_start
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= min(hour_start + 3600.0, end):
                break
            serial += 1
            # Milliseconds, as the CSV keeps them: a written trace reads back the same.
            events.extend(_session(model, rng, round(t, 3), serial, end))
        hour_start += 3600.0
    events.sort(key=lambda e: e.time)
    return events


def _session(
    model: SynthModel, rng: random.Random, start: float, serial: int, end: float
) -> Iterator[TraceEvent]:
    user = f"u{rng.randrange(model.editors):04d}"
    thread = f"t{serial:06d}"
    yield TraceEvent(start, EventKind.OPEN, user, thread, f"{model.wait_seconds:g}")
    length = rng.lognormvariate(math.log(model.session_median), model.session_sigma)
    stop = min(start + length, end)
    t = start
    while True:
        t += rng.expovariate(1.0 / model.gap_mean)
        if t >= stop:
            break
        yield TraceEvent(round(t, 3), EventKind.ACTIVITY, user, thread)
    if rng.random() < model.close_share and start + length < end:
        yield TraceEvent(round(stop, 3), EventKind.CLOSE, user, thread, "deleted")
