"""``simulate --html`` as a reader sees it, in a real browser (Debian's chromium, driven
by Playwright): the summary, the sweep as a table with units, the picture, and the
recommendation with a values.yaml fragment that the simulator reads back."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox_controller.cli import main
from sandbox_controller.sim.report import PLOT_DPI, PLOT_SIZE
from sandbox_controller.sim.trace import SynthModel, synth, write_trace


async def test_the_html_report_shows_summary_sweep_plot_and_a_working_recommendation(
    browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, page_file = tmp_path / "day.csv", tmp_path / "day.html"
    with trace.open("w") as out:
        write_trace(synth(SynthModel(editors=30, seed=2)), out)
    args = ["simulate", "--trace", str(trace), "--max-total-jobs=100", "--sweep=prewarm=1..3"]
    assert main([*args, "--html", str(page_file)]) == 0
    capsys.readouterr()

    page = await browser.new_page()
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    await page.goto(page_file.as_uri())
    await page.wait_for_load_state("load")
    # Nothing but the file itself: the picture is inlined, nothing from the internet.
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []

    headings = await page.locator("h2").all_inner_texts()
    assert [h.split(":")[0] for h in headings] == [
        "Summary",
        "Settings compared",
        "Over time",
        "Recommendation",
    ]

    # The summary: every number with its unit and a sentence on what it means.
    summary = await page.locator("#summary tbody tr").all_inner_texts()
    by_name = {row.split("\t")[0]: row.split("\t")[1:] for row in summary}
    assert by_name["wait p99 (s)"][1].startswith("99th percentile of that wait")
    assert by_name["idle-warm (pod-h)"][1].endswith("the price of prewarm")
    assert all(len(cells) == 2 and len(cells[1]) > 20 for cells in by_name.values())

    # The sweep: units in every heading, one row per run, the given settings in bold.
    sweep_headings = await page.locator("#sweep thead th").all_inner_texts()
    assert all(re.search(r"\(.+\)$", h) for h in sweep_headings), sweep_headings
    assert "wait p95 (s)" in sweep_headings and "idle-warm (pod-h)" in sweep_headings
    rows = [r.split("\t") for r in await page.locator("#sweep tbody tr").all_inner_texts()]
    assert [r[0] for r in rows] == [
        "static 1",
        "static 2",
        "static 3",
        "adaptive 1..20 @0.99",
        "static 5",  # the settings given (the default prewarmPoolSize)
    ]
    assert await page.locator("#sweep tr.given td").first.inner_text() == "static 5"
    weight = await page.locator("#sweep tr.given").evaluate("e => getComputedStyle(e).fontWeight")
    assert int(weight) >= 700

    # The picture: decoded by the browser, at the size the plot is drawn.
    image = page.locator("#plot img")
    size = await image.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
    assert size == [True, PLOT_SIZE[0] * PLOT_DPI, PLOT_SIZE[1] * PLOT_DPI]

    # The recommendation: its fragment parses, and it is the cheapest row that met the
    # target with no 503, with maxTotalJobs a quarter above that row's peak.
    text = await page.locator("#recommendation").inner_text()
    fragment = yaml.safe_load(await page.locator("#fragment").inner_text())
    scaling = fragment["agentSandbox"]["controller"]["scaling"]
    chosen = re.findall(r"with no 503, (.+?) spends the fewest", text)[0]
    row = next(r for r in rows if r[0] == chosen)
    assert float(row[1].rstrip("%")) >= 99.0 and row[6] == "0"
    peak = int(row[9])
    assert scaling["maxTotalJobs"] == math.ceil(peak * 1.25)
    spare = scaling["maxTotalJobs"] - peak
    assert f"leaves {spare} pods ({spare / peak:.0%}) of headroom" in text
    assert f"over the simulated peak of {peak} pods" in text
    assert f"prewarm.policy {scaling['prewarm']['policy']} applies" in text
    if chosen.startswith("static"):
        assert scaling["prewarmPoolSize"] == int(chosen.split()[1])
    await page.close()
