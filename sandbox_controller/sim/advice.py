"""What to paste into values.yaml: which prewarm setting applies, and a ``maxTotalJobs``
with stated headroom over the simulated peak (a trace is one day; the next is busier).
"""

from __future__ import annotations

import math

from ..model import Limits, PrewarmPolicy

DEFAULT_HEADROOM = 0.25  # a quarter above what the trace needed: room for a busier day


def with_headroom(pods: int, headroom: float) -> int:
    """``pods`` plus ``headroom`` (a share), rounded up."""
    return max(1, math.ceil(pods * (1.0 + headroom) - 1e-9))


def applying_setting(limits: Limits) -> str:
    """One sentence: which of prewarmPoolSize and prewarm.* the controller uses."""
    p = limits.prewarm
    if p.policy is PrewarmPolicy.ADAPTIVE:
        return (
            f"prewarm.policy adaptive applies: {p.min}..{p.max} warm pods, sized for "
            f"{p.target_warm_hit_rate:.0%} warm hits; prewarmPoolSize is not used"
        )
    return (
        f"prewarm.policy static applies: prewarmPoolSize {limits.prewarm_pool_size} warm "
        "pods at all times; prewarm.min/max are not used"
    )


def values_fragment(limits: Limits) -> str:
    """The chart values for ``limits``, naming the policy so nothing is left ambiguous."""
    lines = ["agentSandbox:", "  controller:", "    scaling:"]
    p = limits.prewarm
    if p.policy is PrewarmPolicy.ADAPTIVE:
        lines += [
            "      prewarm:",
            "        policy: adaptive  # applies; prewarmPoolSize is not used",
            f"        min: {p.min}",
            f"        max: {p.max}",
            f"        targetWarmHitRate: {p.target_warm_hit_rate:g}",
        ]
    else:
        lines += [
            f"      prewarmPoolSize: {limits.prewarm_pool_size}",
            "      prewarm:",
            "        policy: static  # prewarmPoolSize applies",
        ]
    lines.append(f"      maxTotalJobs: {limits.max_total_jobs}")
    return "\n".join(lines)


def headroom_sentence(cap: int, peak: int) -> str:
    """How much room ``cap`` leaves over the simulated ``peak`` pods."""
    spare = cap - peak
    share = spare / peak if peak else 0.0
    return (
        f"maxTotalJobs {cap} leaves {spare} pods ({share:.0%}) of headroom over the "
        f"simulated peak of {peak} pods"
    )
