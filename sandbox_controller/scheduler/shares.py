"""How the one cap (maxTotalJobs) is shared between the templates' warm pools.

Pure arithmetic, used by lifecycle.py's reconcile. Real demand comes first: a waiting
session's pod is created before any warm pod (first come, first served over every
template). What the cap leaves after that is the warm budget. When it holds every
template's target, each template gets its target. When it does not, it is split in
proportion to the targets ("water-filling": no template gets more than its target,
and what one cannot use goes to the others), so every warm pool fills to the same
fraction of its target and none starves another. A template holding more warm pods
than its share, while another is short and the cap leaves no room, gives its oldest
idle pods up (they are deleted, and the room goes to the short one).
"""

from __future__ import annotations

from collections.abc import Mapping


def warm_shares(budget: int, targets: Mapping[str, int]) -> dict[str, int]:
    """Each template's share of ``budget`` warm pods: its target if all fit, else a
    share in proportion to the targets, never above a target; the shares' sum is
    min(budget, sum of targets). Remainders go to the largest fractions, then in order."""
    budget = max(0, budget)
    total = sum(targets.values())
    if total <= budget:
        return dict(targets)
    shares = {name: budget * target // total for name, target in targets.items()}
    left = budget - sum(shares.values())
    by_fraction = sorted(
        targets, key=lambda name: -((budget * targets[name]) % total) if total else 0
    )
    for name in by_fraction:
        if left <= 0:
            break
        if shares[name] < targets[name]:
            shares[name] += 1
            left -= 1
    return shares


def refill_order(have: Mapping[str, int], wanted: Mapping[str, int], count: int) -> list[str]:
    """Which templates the next ``count`` warm creates go to: one at a time, to the
    template whose pool is proportionally the emptiest (have / wanted), until each has
    what it wants or ``count`` runs out. Ties go to the template listed first."""
    have = dict(have)
    order: list[str] = []
    names = list(wanted)
    while len(order) < count:
        short = [n for n in names if have.get(n, 0) < wanted[n]]
        if not short:
            break
        name = min(short, key=lambda n: (have.get(n, 0) / wanted[n], names.index(n)))
        have[name] = have.get(name, 0) + 1
        order.append(name)
    return order
