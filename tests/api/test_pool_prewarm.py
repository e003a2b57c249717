"""GET /pool and /metrics explain the prewarm policy: which one, its target, and why."""

from __future__ import annotations

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
    # The reason follows the live numbers: 6 arrivals in the last minute, and local
    # sandboxes measured to start in well under a second, so one warm pod covers them.
    assert prewarm["reason"] == "6.00 arrivals/min x start-up p90 0s: 1 warm for 99% warm hits"
    assert prewarm["target"] == 1
    metrics = (await ctl.client.get("/metrics")).text
    assert f"\nsandbox_prewarm_target {float(prewarm['target'])}" in metrics
