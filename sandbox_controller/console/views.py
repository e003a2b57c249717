"""What the console's pages show, computed from the scheduler's copies: rows, sums,
durations in words, and the pool chart's lines (server-side SVG, no script)."""

from __future__ import annotations

import heapq
import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup

from ..api.schemas import wait_detail
from ..model import Limits, PodState, Provisioning, Session, SessionState, SessionView
from ..scheduler.loop import Scheduler
from .hub import Sample

CHART_WIDTH, CHART_HEIGHT = 600, 160
# The chart's lines: pod state, colour (SVG attributes, not CSS: the CSP allows no
# inline style).
CHART_LINES = (
    (PodState.ASSIGNED, "#2563eb"),
    (PodState.IDLE, "#16a34a"),
    (PodState.PENDING, "#d97706"),
    (PodState.TERMINATING, "#6b7280"),
)


def duration(seconds: float) -> str:
    """A short human duration: 42s, 3m 12s, 2h 05m, 3d 4h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def clock_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Row:
    """One session as the tables show it."""

    id: str
    user: str
    thread: str
    state: str  # provisioning, ready, idle, ended
    pod: str
    age: float
    idle_for: float
    activity_at: str
    activity: str  # source, and detail if any
    busy: str  # the sandbox's last word on being busy
    metadata: str
    waiting: str  # provisioning: why
    created_at: float


def state_of(session: Session, now: float, limits: Limits) -> str:
    """provisioning, ready, idle (ready and quiet for idle_after: reclaimable), ended."""
    if session.is_idle(now, limits.idle_after):
        return "idle"
    return session.state.value


def row(session: Session, detail: Provisioning | None, now: float, limits: Limits) -> Row:
    s = session
    source = s.activity_source.value if s.activity_source else ""
    busy = s.activity_detail or "" if source == "busy" else ""
    if not busy and s.end_detail and s.end_detail.busy_answer:
        busy = s.end_detail.busy_answer
    return Row(
        id=s.id,
        user=s.user_id,
        thread=s.thread_id,
        state=state_of(s, now, limits),
        pod=s.pod_name or "",
        age=now - s.created_at,
        idle_for=now - s.last_active_at,
        activity_at=clock_time(s.last_active_at),
        activity=f"{source}: {s.activity_detail}" if s.activity_detail else source,
        busy=busy,
        metadata=", ".join(f"{k}={v}" for k, v in sorted(s.metadata.items())),
        waiting=(wait_detail(detail) or "") if s.state is SessionState.PROVISIONING else "",
        created_at=s.created_at,
    )


def view_row(view: SessionView, now: float, limits: Limits) -> Row:
    return row(view.session, view.detail, now, limits)


SORTS = ("age", "idle", "user", "state")
STATE_FILTERS = ("provisioning", "ready", "idle", "active")


def sessions_table(
    scheduler: Scheduler,
    now: float,
    limits: Limits,
    *,
    user: str,
    state: str,
    text: str,
    sort: str,
    descending: bool,
    limit: int,
) -> tuple[list[Row], int]:
    """The sessions table: live sessions filtered by user (exact), state and a text in
    the ids, pod or metadata, sorted by one column (newest first by default), the first
    ``limit`` of them as rows, and how many matched. Sorting and filtering read a few
    fields of each session; only the rows shown are built."""
    needle = text.lower()

    def key(session: Session, detail: Provisioning | None) -> tuple[Any, str] | None:
        label = state_of(session, now, limits)
        if user and session.user_id != user:
            return None
        if state and label != state and not (state == "active" and label == "ready"):
            return None
        if needle:
            meta = " ".join(f"{k}={v}" for k, v in session.metadata.items())
            seen = f"{session.id} {session.user_id} {session.thread_id} {session.pod_name} {meta}"
            if needle not in seen.lower():
                return None
        newest = -session.created_at
        match sort:
            case "idle":
                return (now - session.last_active_at, newest), session.id
            case "user":
                return (session.user_id, newest), session.id
            case "state":
                return (label, newest), session.id
        return (newest,), session.id

    reader: Callable[[Session, Provisioning | None], tuple[Any, str] | None] = key
    if not (user or state or needle) and sort in _PLAIN_KEYS:
        # Unfiltered (the usual view, and the one open consoles refetch on every
        # change): one attribute or two per session, no state label, no closure cells.
        reader = _PLAIN_KEYS[sort](now)
    keyed = [k for k in scheduler.read_sessions(reader) if k is not None]
    pick = heapq.nlargest if descending else heapq.nsmallest
    shown = [sid for _, sid in pick(limit, keyed)]
    order = {sid: i for i, sid in enumerate(shown)}
    rows = scheduler.read_sessions(lambda s, d: row(s, d, now, limits), shown)
    rows.sort(key=lambda r: order[r.id])
    return rows, len(keyed)


_PLAIN_KEYS: dict[str, Callable[[float], Callable[[Session, Any], tuple[Any, str]]]] = {
    "age": lambda now: lambda s, _: ((-s.created_at,), s.id),
    "idle": lambda now: lambda s, _: ((now - s.last_active_at, -s.created_at), s.id),
    "user": lambda now: lambda s, _: ((s.user_id, -s.created_at), s.id),
}


def rows_html(rows: Iterable[Row]) -> Markup:
    """The sessions table's body, built here rather than in the template: at 5,000
    rows Jinja's escaping of each value one by one was two thirds of the page's time
    (issue 23: the page with 5,000 live sessions in under 300 ms)."""
    out = []
    for r in rows:
        e = {k: escape(getattr(r, k)) for k in _TEXT}
        waiting = f'<div class="reason">{e["waiting"]}</div>' if r.waiting else ""
        out.append(
            f'<tr data-session="{e["id"]}" class="state-{e["state"]}">'
            f'<td><a href="/console/sessions/{e["id"]}">{e["id"][:12]}</a></td>'
            f"<td>{e['user']}</td><td>{e['thread']}</td><td>{e['state']}{waiting}</td>"
            f"<td>{e['pod']}</td><td>{duration(r.age)}</td><td>{duration(r.idle_for)}</td>"
            f'<td title="{e["activity_at"]}">{e["activity"]}</td><td>{e["busy"]}</td>'
            f"<td>{e['metadata']}</td></tr>\n"
        )
    return Markup("".join(out))


_TEXT = (
    "id",
    "user",
    "thread",
    "state",
    "pod",
    "activity_at",
    "activity",
    "busy",
    "metadata",
    "waiting",
)


def escape(text: str) -> str:
    return html.escape(text, quote=True)


@dataclass(frozen=True)
class UserRow:
    user: str
    live: int
    provisioning: int
    idle: int
    oldest_idle: float  # how long its most idle session has been quiet (0: none idle)
    oldest_idle_id: str


def users(rows: Sequence[Row]) -> list[UserRow]:
    """Live sessions per user; the user with the longest-idle session first."""
    by_user: dict[str, list[Row]] = {}
    for r in rows:
        by_user.setdefault(r.user, []).append(r)
    out = []
    for user, mine in by_user.items():
        idle = [r for r in mine if r.state == "idle"]
        oldest = max(idle, key=lambda r: r.idle_for) if idle else None
        out.append(
            UserRow(
                user=user,
                # Against the limit: a suspended session holds no place (README).
                live=sum(r.state not in ("suspending", "suspended") for r in mine),
                provisioning=sum(r.state == "provisioning" for r in mine),
                idle=len(idle),
                oldest_idle=oldest.idle_for if oldest else 0.0,
                oldest_idle_id=oldest.id if oldest else "",
            )
        )
    out.sort(key=lambda u: (-u.oldest_idle, -u.live, u.user))
    return out


def end_words(session: Session) -> str:
    """Why an ended session ended, beyond its reason."""
    d = session.end_detail
    if d is None:
        return ""
    parts = []
    if d.claim_answer:
        parts.append(d.claim_answer)
    if d.busy_answer:
        parts.append(f"status hook: {d.busy_answer}")
    if d.activity_source:
        parts.append(f"last activity {d.activity_source.value} at {clock_time(d.last_active_at)}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Chart:
    lines: list[tuple[str, str, str]]  # (label, colour, SVG points)
    cap_y: float
    top: int
    span: str  # how much time the chart covers, in words


def chart(samples: Sequence[Sample], max_total_jobs: int) -> Chart | None:
    """Pods by state over the last hour; None until there are two points."""
    if len(samples) < 2:
        return None
    top = max(max_total_jobs, *(max(s.pods.values(), default=0) for s in samples), 1)
    start, end = samples[0].at, samples[-1].at
    width = max(end - start, 1.0)

    def y(count: int) -> float:
        return round(CHART_HEIGHT - count / top * (CHART_HEIGHT - 10), 1)

    lines = []
    for state, colour in CHART_LINES:
        points = " ".join(
            f"{round((s.at - start) / width * CHART_WIDTH, 1)},{y(s.pods.get(state, 0))}"
            for s in samples
        )
        lines.append((state.value, colour, points))
    return Chart(lines, y(max_total_jobs), top, duration(end - start))
