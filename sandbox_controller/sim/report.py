"""What a simulation found, for people: a summary, a sweep table, a PNG, an HTML page.

matplotlib is imported only when a picture is asked for (the ``sim`` extra), so
the controller never loads it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model import EndReason, Outcome, PodState, PrewarmPolicy
from .simulate import Result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_SIZE = (12.0, 5.0)  # inches
PLOT_DPI = 100  # so the PNG is 1200 x 500 pixels


def setting(result: Result) -> str:
    limits = result.limits
    if limits.prewarm.policy is PrewarmPolicy.ADAPTIVE:
        p = limits.prewarm
        return f"adaptive {p.min}..{p.max} @{p.target_warm_hit_rate:.3g}"
    return f"static {limits.prewarm_pool_size}"


def figures(result: Result) -> dict[str, Any]:
    """The numbers every view shows, by name."""
    return {
        "prewarm": setting(result),
        "max_total_jobs": result.limits.max_total_jobs,
        "requests": sum(result.requests.values()),
        "warm_hit_rate": result.warm_hit_rate,
        "wait_p50": result.wait_percentile(0.50),
        "wait_p95": result.wait_percentile(0.95),
        "wait_p99": result.wait_percentile(0.99),
        "refused_429": result.requests[Outcome.USER_LIMIT],
        "refused_503": result.requests[Outcome.CAPACITY],
        "reclaims": result.ended[EndReason.RECLAIMED],
        "idle_timeouts": result.ended[EndReason.IDLE_TIMEOUT],
        "peak_pods": result.peak_pods,
        "assigned_pod_hours": result.pod_hours(PodState.ASSIGNED),
        "idle_warm_pod_hours": result.pod_hours(PodState.IDLE),
    }


def _org_refusals(result: Result) -> str:
    """The refusals by an org's plan, when the trace had any (README "Orgs and plans")."""
    limit, rate = result.requests[Outcome.ORG_LIMIT], result.requests[Outcome.ORG_RATE]
    if not limit and not rate:
        return ""
    return f", {limit} x 429 org_session_limit, {rate} x 429 org_rate_limited"


def summary(result: Result) -> str:
    f = figures(result)
    return "\n".join(
        [
            f"Simulated {result.duration / 3600:.1f} h, pod start-up {result.startup.describe()}",
            f"Prewarm:              {f['prewarm']} (maxTotalJobs {f['max_total_jobs']})",
            f"New sessions asked:   {f['requests']}",
            f"Warm-hit rate:        {f['warm_hit_rate']:.2%}",
            f"Wait for a sandbox:   p50 {f['wait_p50']:.1f}s  p95 {f['wait_p95']:.1f}s  "
            f"p99 {f['wait_p99']:.1f}s",
            f"Refused:              {f['refused_429']} x 429 user_session_limit, "
            f"{f['refused_503']} x 503 capacity_exhausted" + _org_refusals(result),
            f"Ended by policy:      {f['reclaims']} reclaimed, {f['idle_timeouts']} idle timeouts",
            f"Peak pods:            {f['peak_pods']}",
            f"Pod-hours:            {f['assigned_pod_hours']:.1f} assigned, "
            f"{f['idle_warm_pod_hours']:.1f} idle-warm",
            *suspension_lines(result),
        ]
    )


def suspension_lines(result: Result) -> list[str]:
    """With suspension on: what it did and what its archives take in the store."""
    s = result.suspension
    if s is None:
        return []
    size = s.archive_bytes / 2**20
    return [
        f"Suspended:            {s.suspends} sessions (idle {result.limits.idle_timeout / 60:g} min"
        f" or reclaimed); {s.resumes} resumed ({s.wakes} woken by traffic), "
        f"{s.restore_failures} restores failed",
        f"Resume:               p50 {s.resume_percentile(0.50):.1f}s  "
        f"p95 {s.resume_percentile(0.95):.1f}s (asked to ready, archive restored)",
        f"Snapshot store:       peak {s.peak_archives} archives x {size:g} MiB = "
        f"{s.peak_bytes / 2**30:.2f} GiB; {s.gib_hours:.1f} GiB-hours "
        f"(average {s.gib_hours / max(result.duration / 3600, 1e-9):.2f} GiB)",
    ]


def suspension_comparison(given: Result, suspended: Result) -> str:
    """The trace replayed as configured and with idle sessions suspended: the pod-hours
    suspension saves and the resumes it costs."""
    s = suspended.suspension
    assert s is not None
    before = given.pod_hours(PodState.ASSIGNED)
    after = suspended.pod_hours(PodState.ASSIGNED)
    saved = before - after
    share = saved / before if before else 0.0
    return "\n".join(
        [
            f"With suspension after {suspended.limits.idle_timeout / 60:g} min idle "
            f"(as given: idle sessions end after {given.limits.idle_timeout / 60:g} min):",
            f"  Pod-hours saved:    {saved:.1f} of {before:.1f} assigned ({share:.1%})",
            f"  Resumes it costs:   {s.resumes} ({s.wakes} woken by traffic), "
            f"p95 {s.resume_percentile(0.95):.1f}s each",
            f"  Refused:            {suspended.requests[Outcome.CAPACITY]} x 503 "
            f"(as given: {given.requests[Outcome.CAPACITY]}), peak pods "
            f"{suspended.peak_pods} (as given: {given.peak_pods})",
            f"  Snapshot store:     peak {s.peak_archives} archives, "
            f"{s.peak_bytes / 2**30:.2f} GiB",
        ]
    )


# (figure, heading, unit, format, width): the unit is printed under every heading.
COLUMNS = (
    ("prewarm", "prewarm", "setting", "{}", 24),
    ("warm_hit_rate", "warm hit", "% asked", "{:.2%}", 9),
    ("wait_p50", "wait p50", "s", "{:.1f}", 8),
    ("wait_p95", "wait p95", "s", "{:.1f}", 8),
    ("wait_p99", "wait p99", "s", "{:.1f}", 8),
    ("refused_429", "429", "count", "{}", 7),
    ("refused_503", "503", "count", "{}", 7),
    ("reclaims", "reclaims", "count", "{}", 8),
    ("idle_timeouts", "idle t/o", "count", "{}", 8),
    ("peak_pods", "peak", "pods", "{}", 6),
    ("assigned_pod_hours", "assigned", "pod-h", "{:.1f}", 9),
    ("idle_warm_pod_hours", "idle-warm", "pod-h", "{:.1f}", 9),
)
# What each number means, for the HTML page (and anyone reading this).
MEANINGS = {
    "prewarm": "the prewarm setting of the run: static N keeps N warm pods; adaptive min..max "
    "@rate sizes the warm pool from recent arrivals for that warm-hit rate",
    "warm_hit_rate": "share of new sessions that got an already-running pod at once "
    "(a refused session counts as a miss)",
    "wait_p50": "median seconds a new session waited for its sandbox",
    "wait_p95": "95th percentile of that wait, in seconds",
    "wait_p99": "99th percentile of that wait, in seconds (a cold start shows here first)",
    "refused_429": "new sessions refused because the user already had maxSessionsPerUser",
    "refused_503": "new sessions refused because maxTotalJobs pods were already in use",
    "reclaims": "idle sessions ended early to free a pod for someone waiting",
    "idle_timeouts": "sessions ended after idleTimeout without activity",
    "peak_pods": "most pods that existed at one moment (assigned, warm and starting)",
    "assigned_pod_hours": "pod-hours spent serving sessions",
    "idle_warm_pod_hours": "pod-hours spent warm and unused: the price of prewarm",
}


def _cells(result: Result, given: Result | None) -> list[str]:
    f = figures(result)
    cells = [fmt.format(f[key]) for key, _, _, fmt, _ in COLUMNS]
    if result is given:
        cells[0] += " (given)"
    return cells


def table(results: Sequence[Result], *, given: Result | None = None) -> str:
    """One row per result (a sweep), headings over their units; ``given`` is marked."""
    widths = [width for *_, width in COLUMNS]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    lines = [line([c[1] for c in COLUMNS]), line([f"({c[2]})" for c in COLUMNS])]
    lines += [line(_cells(r, given)) for r in results]
    return "\n".join(lines)


# The lower panel averages over this many minutes: the warm pool changes at every
# arrival, and per-event samples draw as a comb.
SMOOTHING_MINUTES = 15


def series(result: Result) -> dict[str, list[float]]:
    """The plotted series, by name (hours and pod counts): what the picture shows."""
    samples = result.samples
    return {
        "hours": [s.time / 3600 for s in samples],
        "demand": [float(s.demand) for s in samples],
        "assigned": [float(s.assigned) for s in samples],
        "warm": [float(s.warm) for s in samples],
        "pending": [float(s.pending) for s in samples],
        "target": [float(s.target) for s in samples],
    }


def averaged(result: Result, minutes: float = SMOOTHING_MINUTES) -> dict[str, list[float]]:
    """Time-weighted averages of the warm pool over ``minutes``-long bins (each sample
    holds until the next): the lower panel. ``hours`` are the bins' starts."""
    width = minutes * 60.0
    samples = result.samples
    bins = max(1, int(-(-result.duration // width)))
    names = ("warm", "pending", "target")
    sums = {name: [0.0] * bins for name in names}
    for here, after in zip(samples, [*samples[1:], None], strict=True):
        start = here.time
        end = after.time if after is not None else result.duration
        while start < end:
            index = min(int(start // width), bins - 1)
            stop = min(end, (index + 1) * width)
            if stop <= start:  # the last bin: the remainder
                stop = end
            for name in names:
                sums[name][index] += getattr(here, name) * (stop - start)
            start = stop
    out = {"hours": [i * width / 3600 for i in range(bins)]}
    for name in names:
        # The last bin may be cut short by the trace's end: average over what it holds.
        spans = [min(width, result.duration - i * width) or width for i in range(bins)]
        out[name] = [total / span for total, span in zip(sums[name], spans, strict=True)]
    return out


def draw(result: Result) -> Figure:
    """Above: sessions wanting a sandbox over the pods assigned to them, against the
    cap. Below: the warm pool (averaged), pods starting, the prewarm target. Two panels:
    sessions run to hundreds while the warm pool is a handful. The caller closes it."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot as plt

    data = series(result)
    smooth = averaged(result)
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=PLOT_SIZE,
        dpi=PLOT_DPI,
        height_ratios=(3, 2),
        layout="constrained",
    )
    hours = data["hours"]
    top.fill_between(
        hours,
        data["assigned"],
        step="post",
        color="tab:blue",
        alpha=0.35,
        lw=0,
        label="pods assigned to sessions",
    )
    top.fill_between(
        hours,
        data["assigned"],
        data["demand"],
        step="post",
        color="tab:red",
        alpha=0.6,
        lw=0,
        label="sessions waiting for a pod",
    )
    top.step(hours, data["assigned"], where="post", color="tab:blue", lw=0.8)
    top.step(
        hours,
        data["demand"],
        where="post",
        color="black",
        lw=1.2,
        zorder=3,
        label="sessions wanting a sandbox (demand)",
    )
    cap = result.limits.max_total_jobs
    peak = max(data["demand"], default=0.0)
    if cap <= 2 * max(peak, 1.0):
        top.axhline(cap, color="tab:red", ls="--", lw=1.2, label=f"maxTotalJobs cap ({cap} pods)")
        top.set_ylim(0, cap * 1.08)
    else:
        top.plot([], [], " ", label=f"maxTotalJobs cap ({cap} pods): off the chart")
    for code, color, why in (
        (429, "tab:purple", "429 refused: user at maxSessionsPerUser"),
        (503, "tab:red", "503 refused: cap reached"),
    ):
        times = [t / 3600 for t, c in result.refusals if c == code]
        if times:
            top.plot(times, [0] * len(times), "|", ms=14, color=color, label=why)
    minutes = SMOOTHING_MINUTES
    bottom.step(
        smooth["hours"],
        smooth["warm"],
        where="post",
        color="tab:green",
        lw=1.2,
        label=f"warm pods, ready and unused ({minutes}-min average)",
    )
    bottom.step(
        smooth["hours"],
        smooth["pending"],
        where="post",
        color="tab:orange",
        lw=1.2,
        label=f"pods starting ({minutes}-min average)",
    )
    bottom.step(
        smooth["hours"],
        smooth["target"],
        where="post",
        color="black",
        ls=":",
        lw=1.2,
        label=f"prewarm target ({minutes}-min average)",
    )
    f = figures(result)
    fig.suptitle(
        f"{setting(result)}: {f['warm_hit_rate']:.2%} warm hits, "
        f"{f['idle_warm_pod_hours']:.0f} idle-warm pod-hours, pod start-up "
        f"{result.startup.describe()}"
    )
    bottom.set_xlabel("time since the trace's start (hours)")
    top.set_ylabel("sessions or pods (count)")
    bottom.set_ylabel("pods (count)")
    bottom.set_ylim(0, max(1.0, *smooth["warm"], *smooth["pending"], *smooth["target"]) * 1.15)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        # Beside the plot, so no legend hides the cap or the peak.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    bottom.set_xlim(0, result.duration / 3600)
    return fig


def plot_png(result: Result) -> bytes:
    from matplotlib import pyplot as plt

    fig = draw(result)
    try:
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=PLOT_DPI)
        return out.getvalue()
    finally:
        plt.close(fig)


def write_plot(result: Result, path: Path) -> None:
    path.write_bytes(plot_png(result))
