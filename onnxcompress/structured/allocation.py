"""How many channels each dependency group loses: one ratio everywhere, or a global allocation.

``uniform`` gives every group the same ratio (the plan's global ratio, or the one ``target_flops``
picks). That is the wrong answer when layers differ in how much they can lose: in MiniLM the
least-squares refit brings the output error of MLPs 0 and 2 down to 1.5-3% at 30% of their neurons
removed, while MLPs 3-5 stay at 8-10%. ``global`` removes the same *total* number of channels
from the pool of groups that follow the global ratio, but picks them across groups, cheapest
first, by each channel's normalised marginal cost (:func:`onnxcompress.structured.criteria.importance`
fills ``costs``: with ``obs``, the share of the consumers' output energy its removal adds to the
error after re-solving the rest) divided by the FLOPs one channel of its group costs. Taking the
cheapest marginal costs first minimises the summed relative output error of the pool for the
FLOPs removed (a greedy knapsack over each group's error curve; a curve is made non-decreasing,
its running maximum, so a group's removal order stays its criterion's order). Groups with an op
type or name override keep their own ratio. Pure Python over the scores; no graph access.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from onnxcompress.structured.graph import Group

ALLOCATIONS = ("uniform", "global")


def removal_order(group: Group, scores: Mapping[int, float]) -> list[int]:
    """The group's removable classes, first removed first (the order :func:`choose` uses)."""
    return sorted((c for c in group.classes if c not in group.fixed), key=lambda c: (scores[c], c))


def allocate(
    pool: Iterable[Group],
    scores: Mapping[int, Mapping[int, float]],
    costs: Mapping[int, float],
    ratio: float,
    flops_per_channel: Mapping[int, float],
    min_channels: int = 1,
) -> dict[int, float]:
    """Per-group ratios (group index -> fraction removed) that together remove ``ratio`` of the
    pool's channels, the cheapest channels anywhere in the pool first."""
    groups = list(pool)
    total = sum(g.channels for g in groups)
    budget = math.floor(ratio * total + 1e-9)
    items: list[tuple[float, int, int]] = []
    for g in groups:
        order = removal_order(g, scores[g.index])
        cap = min(len(order), g.channels - min_channels)
        if cap <= 0:
            continue
        curve = np.array([costs.get(c, 0.0) for c in order[:cap]], dtype=np.float64)
        curve = np.maximum.accumulate(np.nan_to_num(curve, nan=np.inf)) / max(
            flops_per_channel.get(g.index, 1.0), 1e-30
        )
        items.extend((float(v), g.index, k) for k, v in enumerate(curve))
    items.sort()
    counts = dict.fromkeys((g.index for g in groups), 0)
    for _, gi, _ in items[:budget]:
        counts[gi] += 1
    channels = {g.index: g.channels for g in groups}
    return {gi: n / channels[gi] for gi, n in counts.items()}
