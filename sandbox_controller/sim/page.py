"""``simulate --html``: one self-contained page (no asset from elsewhere) with the run's
summary, the sweep as a table with units, the picture, and a recommendation with its
values.yaml fragment, every number explained."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..model import Limits, Outcome, PodState
from .advice import (
    DEFAULT_HEADROOM,
    applying_setting,
    headroom_sentence,
    values_fragment,
    with_headroom,
)
from .report import COLUMNS, MEANINGS, SMOOTHING_MINUTES, figures, plot_png, setting
from .simulate import Result

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0}
tr.given{font-weight:bold}pre{background:#f6f6f6;padding:1em}img{max-width:100%}"""


def recommend_from(
    results: Sequence[Result], headroom: float = DEFAULT_HEADROOM
) -> tuple[Result, Limits] | None:
    """The run with the fewest idle-warm pod-hours that reached its target warm-hit rate
    with no 503, its maxTotalJobs set to its peak plus ``headroom``; None if no run did."""
    good = [
        r
        for r in results
        if r.warm_hit_rate >= r.limits.prewarm.target_warm_hit_rate
        and r.requests[Outcome.CAPACITY] == 0
    ]
    if not good:
        return None
    best = min(good, key=lambda r: (r.pod_hours(PodState.IDLE), r.peak_pods))
    cap = max(with_headroom(best.peak_pods, headroom), best.limits.prewarm_pool_size)
    return best, replace(best.limits, max_total_jobs=cap)


def render_html(results: Sequence[Result], given: Result, trace: str) -> str:
    e = html.escape
    f = figures(given)
    summary_rows = "".join(
        f"<tr><th scope=row>{e(heading)} ({e(unit)})</th>"
        f"<td{'' if key == 'prewarm' else ' class=n'}>{e(fmt.format(f[key]))}</td>"
        f"<td>{e(MEANINGS[key])}</td></tr>"
        for key, heading, unit, fmt, _ in COLUMNS
    )
    headings = "".join(f"<th scope=col>{e(h)} ({e(u)})</th>" for _, h, u, _, _ in COLUMNS)
    rows = []
    for result in results:
        fr = figures(result)
        cells = "".join(
            f"<td{'' if key == 'prewarm' else ' class=n'}>{e(fmt.format(fr[key]))}</td>"
            for key, _, _, fmt, _ in COLUMNS
        )
        rows.append(f"<tr{' class=given' if result is given else ''}>{cells}</tr>")
    picture = base64.b64encode(plot_png(given)).decode()
    target = given.limits.prewarm.target_warm_hit_rate
    picked = recommend_from(results)
    if picked is None:
        recommendation = (
            f"<p>No run reached {target:.0%} warm hits without a 503. Widen the sweep, or "
            "let <code>sandbox-controller plan --trace FILE</code> search for you.</p>"
        )
    else:
        best, advice = picked
        recommendation = (
            f"<p>Of the runs above that reached {target:.0%} warm hits with no 503, "
            f"<strong>{e(setting(best))}</strong> spends the fewest idle-warm pod-hours "
            f"({best.pod_hours(PodState.IDLE):.1f}). {e(applying_setting(advice))}. "
            f"{e(headroom_sentence(advice.max_total_jobs, best.peak_pods))}, "
            "for a busier day than this trace.</p>"
            f"<p>Paste into values.yaml:</p><pre id=fragment>{e(values_fragment(advice))}</pre>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Pool simulation of {e(trace)}</title>
<style>{STYLE}</style></head>
<body><h1>Pool simulation of {e(trace)}</h1>
<section id=summary><h2>Summary: {e(setting(given))}</h2>
<p>{given.duration / 3600:.1f} hours of traffic replayed through the controller's scheduler
with pod start-up {e(given.startup.describe())} and maxTotalJobs
{given.limits.max_total_jobs}: {f["requests"]} new sessions asked for a sandbox.</p>
<table><thead><tr><th scope=col>number (unit)</th><th scope=col>value</th>
<th scope=col>what it means</th></tr></thead><tbody>{summary_rows}</tbody></table></section>
<section id=sweep><h2>Settings compared</h2>
<p>One row per run on the same trace; the settings given are in bold.</p>
<table><thead><tr>{headings}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>
<section id=plot><h2>Over time: {e(setting(given))}</h2>
<img alt="sessions wanting a sandbox, pods assigned, the maxTotalJobs cap, and the warm
pool over time" src="data:image/png;base64,{picture}">
<p>Above: the black line is the sessions wanting a sandbox; the blue area under it the pods
assigned to them, red where sessions wait for a pod; the dashed red line is the
maxTotalJobs cap. Below: warm pods ready and unused, pods starting, and the prewarm
target, each averaged over {SMOOTHING_MINUTES} minutes.</p></section>
<section id=recommendation><h2>Recommendation</h2>{recommendation}</section>
</body></html>
"""


def write_html(results: Sequence[Result], given: Result, trace: str, path: Path) -> None:
    path.write_text(render_html(results, given, trace))
