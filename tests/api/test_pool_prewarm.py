"""GET /pool and /metrics explain the prewarm policy: which one, its target, and why."""

from __future__ import annotations

import re

from tests.conftest import ControllerFactory


async def test_static_prewarm_is_shown_as_the_configured_size(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(prewarm_pool_size=2)
    await ctl.wait_idle_pods(2)
    assert (await ctl.pool())["prewarm"] == {
        "policy": "static",
        "target": 2,
        "reason": "static: prewarmPoolSize",
    }
    assert "\nsandbox_prewarm_target 2.0" in (await ctl.client.get("/metrics")).text


async def test_adaptive_prewarm_shows_its_target_and_reason(
    start_controller: ControllerFactory,
) -> None:
    ctl = await start_controller(
        prewarm_policy="adaptive", prewarm_min=1, prewarm_max=4, prewarm_pool_size=0
    )
    await ctl.wait_idle_pods(1)  # min, with no traffic yet
    prewarm = (await ctl.pool())["prewarm"]
    assert (prewarm["policy"], prewarm["target"]) == ("adaptive", 1)
    assert prewarm["reason"].startswith("0.00 arrivals/min")
    for i in range(6):
        assert (await ctl.open(f"user{i}", f"t{i}")).status_code == 201
    prewarm = (await ctl.pool())["prewarm"]
    # The reason follows the live numbers: 6 arrivals in the last minute, times the
    # start-up measured on these local sandboxes (well under a second when the machine
    # is quiet, more when it is busy), and the target it gives.
    reason = re.fullmatch(
        r"6\.00 arrivals/min x start-up p90 (\d+)s: (\d+) warm for 99% warm hits",
        prewarm["reason"],
    )
    assert reason is not None, prewarm["reason"]
    assert int(reason.group(2)) == prewarm["target"]
    assert 1 <= prewarm["target"] <= 4  # within min and max
    if int(reason.group(1)) == 0:
        assert prewarm["target"] == 1  # 6/min over under a second: one pod covers it
    metrics = (await ctl.client.get("/metrics")).text
    assert f"\nsandbox_prewarm_target {float(prewarm['target'])}" in metrics
