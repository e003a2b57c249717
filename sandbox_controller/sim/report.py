"""What a simulation found, for people: a summary, a sweep table, a PNG, an HTML page.

matplotlib is imported only when a picture is asked for (the ``sim`` extra), so
the controller never loads it.
"""

from __future__ import annotations

import base64
import html
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
            f"{f['refused_503']} x 503 capacity_exhausted",
            f"Ended by policy:      {f['reclaims']} reclaimed, {f['idle_timeouts']} idle timeouts",
            f"Peak pods:            {f['peak_pods']}",
            f"Pod-hours:            {f['assigned_pod_hours']:.1f} assigned, "
            f"{f['idle_warm_pod_hours']:.1f} idle-warm",
        ]
    )


COLUMNS = (
    ("prewarm", "{}", 24),
    ("warm_hit_rate", "{:.2%}", 9),
    ("wait_p50", "{:.1f}", 8),
    ("wait_p95", "{:.1f}", 8),
    ("wait_p99", "{:.1f}", 8),
    ("refused_429", "{}", 5),
    ("refused_503", "{}", 5),
    ("reclaims", "{}", 8),
    ("idle_timeouts", "{}", 8),
    ("peak_pods", "{}", 5),
    ("assigned_pod_hours", "{:.1f}", 9),
    ("idle_warm_pod_hours", "{:.1f}", 9),
)
HEADINGS = {
    "prewarm": "prewarm",
    "warm_hit_rate": "warm hit",
    "wait_p50": "wait p50",
    "wait_p95": "wait p95",
    "wait_p99": "wait p99",
    "refused_429": "429",
    "refused_503": "503",
    "reclaims": "reclaims",
    "idle_timeouts": "idle t/o",
    "peak_pods": "peak",
    "assigned_pod_hours": "assign h",
    "idle_warm_pod_hours": "idle h",
}


def table(results: Sequence[Result], *, markdown: bool = False) -> str:
    """One row per result (a sweep): text columns, or a Markdown table."""
    rows = [[fmt.format(figures(r)[key]) for key, fmt, _ in COLUMNS] for r in results]
    headings = [HEADINGS[key] for key, _, _ in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [width for _, _, width in COLUMNS]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headings, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


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


def draw(result: Result) -> Figure:
    """Demand and assigned pods above; warm, pending and the prewarm target below;
    refusals marked. Two panels: sessions run to hundreds while the warm pool is a
    handful. The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot as plt

    data = series(result)
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=PLOT_SIZE, dpi=PLOT_DPI, height_ratios=(3, 2)
    )
    hours = data["hours"]
    top.plot(hours, data["demand"], label="demand (live sessions)", color="black", lw=1)
    top.plot(hours, data["assigned"], label="assigned pods", color="tab:blue", lw=1)
    bottom.plot(hours, data["warm"], label="warm pods", color="tab:green", lw=1)
    bottom.plot(hours, data["pending"], label="pending pods", color="tab:orange", lw=1)
    bottom.plot(hours, data["target"], label="prewarm target", color="black", ls=":", lw=1)
    for code, color in ((429, "tab:purple"), (503, "tab:red")):
        times = [t / 3600 for t, c in result.refusals if c == code]
        if times:
            top.plot(times, [0] * len(times), "|", ms=14, color=color, label=f"{code} refusal")
    f = figures(result)
    top.set_title(
        f"{setting(result)}: warm hits {f['warm_hit_rate']:.2%}, "
        f"{f['idle_warm_pod_hours']:.0f} idle-warm pod-hours, start-up "
        f"{result.startup.describe()}"
    )
    bottom.set_xlabel("hours")
    top.set_ylabel("sessions / pods")
    bottom.set_ylabel("pods")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
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


def write_html(results: Sequence[Result], path: Path) -> None:
    """One self-contained page: the summary, the table, and the picture inlined."""
    main = results[-1]
    picture = base64.b64encode(plot_png(main)).decode()
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>sandbox-controller simulate</title>
<style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}
img{{max-width:100%}}</style></head>
<body><h1>Pool simulation</h1>
<pre>{html.escape(summary(main))}</pre>
<h2>Settings compared</h2>
<pre>{html.escape(table(results))}</pre>
<h2>Over time</h2>
<img alt="demand, assigned, warm and pending pods over time" src="data:image/png;base64,{picture}">
</body></html>
"""
    path.write_text(page)
