"""Stage 2: a plan for any size target in milliseconds, from the stage-1 table alone.

Per weight the table gives, for each choice, its exact byte change and its output error with only
that weight compressed. Treating both as additive (sizes are, up to shared overheads; small
independent output perturbations add in squared error), the best plan for a size budget is a
multiple-choice knapsack. The Lagrangian relaxation solves it per weight: for a price ``lam`` each
weight independently takes the choice minimising ``error + lam * bytes``; sweeping ``lam`` traces
the lower convex hull of (size, error), from "keep everything" to "smallest everything". The
search then checks the real model along that path (:func:`frontier`), which is where stage 2's
accuracy comes from: the proxy orders plans, the real model decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxcompress.search.sensitivity import SensitivityTable
from onnxcompress.search.space import Choice, Plan


@dataclass(frozen=True)
class Allocation:
    plan: Plan
    est_bytes: int
    est_error: float
    lam: float


def _pick(table: SensitivityTable, lam: float) -> Plan:
    choices: dict[str, Choice] = {}
    for layer in table.layers:
        best: tuple[float, int, Choice] | None = None
        for p in table.points[layer.name]:
            if not math.isfinite(p.error):
                continue
            score = p.error + lam * p.delta_bytes if math.isfinite(lam) else p.delta_bytes
            cand = (score, p.delta_bytes, p.choice)
            if best is None or cand[:2] < best[:2]:
                best = cand
        choices[layer.name] = best[2] if best is not None else Choice.keep()
    return Plan(choices)


def frontier(table: SensitivityTable, points: int = 400) -> list[Allocation]:
    """The distinct Lagrangian plans, smallest estimated size first."""
    errs = [p.error for pts in table.points.values() for p in pts if p.error > 0 and math.isfinite(p.error)]
    sizes = [abs(p.delta_bytes) for pts in table.points.values() for p in pts if p.delta_bytes]
    if not errs or not sizes:
        lams = [0.0, math.inf]
    else:
        # prices from "one byte is worth the smallest error" to "all the error for one byte"
        lo = min(errs) / max(sizes) / 10
        hi = sum(max(e for e in errs if math.isfinite(e)) for _ in table.layers) * 10
        lams = [0.0, *np.geomspace(lo, hi, points).tolist(), math.inf]
    seen: dict[tuple, Allocation] = {}
    for lam in lams:
        plan = _pick(table, lam)
        key = plan.key()
        if key not in seen:
            size, err = table.estimate(plan)
            seen[key] = Allocation(plan, size, err, lam)
    return sorted(seen.values(), key=lambda a: (a.est_bytes, a.est_error))


def allocate(table: SensitivityTable, max_bytes: float) -> Allocation:
    """The least-error Lagrangian plan whose estimated size fits ``max_bytes`` (or the smallest)."""
    path = frontier(table)
    fitting = [a for a in path if a.est_bytes <= max_bytes]
    if not fitting:
        return path[0]
    return min(fitting, key=lambda a: (a.est_error, a.est_bytes))


def uniform(table: SensitivityTable, choice: Choice) -> Plan:
    """Every weight with the same choice (the baseline a user would pick by hand)."""
    return Plan({layer.name: choice for layer in table.layers})


def global_profile(
    weights: Mapping[str, np.ndarray], sparsity: float, bits: int, granularity: str = "tensor",
    max_sparsity: float = 0.99,
) -> Plan:  # fmt: skip
    """One uniform setting as a plan: ``bits`` everywhere and the per-weight pruned fractions that
    global magnitude pruning at ``sparsity`` gives (one threshold over every weight's magnitudes,
    so big, redundant layers lose more than small ones; ``pruning: global`` of ``compress``),
    rounded to the search space's 0.01 steps. These are the search's uniform seeds: the settings a
    user would try first, so the search never returns worse than the best of them it evaluated."""
    if not weights:
        return Plan()
    mags = np.concatenate([np.abs(np.asarray(w, dtype=np.float64)).ravel() for w in weights.values()])
    t = float(np.quantile(mags, sparsity)) if sparsity > 0 else -1.0
    choices = {}
    for name, w in weights.items():
        frac = float(np.mean(np.abs(np.asarray(w, dtype=np.float64)) <= t)) if sparsity > 0 else 0.0
        choices[name] = Choice(min(round(frac, 2), max_sparsity), int(bits), granularity)
    return Plan(choices)
