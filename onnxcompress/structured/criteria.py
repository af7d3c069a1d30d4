"""Channel importance: which channel classes of a group to remove first.

* ``l1`` / ``l2``: the norm of each source's output filter (Li et al. 2017, "Pruning Filters for
  Efficient ConvNets"), summed over the sources a class stands for (every branch of a residual
  sum);
* ``bn``: the magnitude of the BatchNormalization scale that follows (Liu et al. 2017, network
  slimming), ``l1`` where a group has no BatchNormalization;
* ``activation`` (needs calibration statistics): the energy a channel sends into the next layer,
  ``E[x_c^2] * ||W_next[:, c]||^2`` summed over its consumers: the part of the consumer's output
  that removing the channel takes away (with zero-mean error terms assumed independent). Groups
  without calibrated consumers fall back to ``l2``;
* ``obs`` (needs calibration statistics): Optimal Brain Surgeon at the neuron level, the
  criterion of structured OBS pruners (Kurtic et al. 2022, ZipLM 2023): with ``H = E[[x, 1][x, 1]^T]``
  of a MatMul / Gemm consumer, removing input ``j`` and re-solving the rest costs
  ``||W_j||^2 / [H^-1]_jj``; neurons are removed greedily, cheapest first, updating ``H^-1`` and
  ``W`` after each (so correlated neurons are not all kept or all dropped), and the removal order is
  the score. Unlike ``activation`` it sees what the least-squares refit can recover (a neuron that
  is a mix of others costs nothing). Groups whose consumers are not all MatMul / Gemm with one
  position per channel use ``activation``.

Attention-head groups (a class is one head): ``l1`` / ``l2`` sum the head's Q, K and V columns and
its rows of the output projection; ``activation`` the energy its ``head_dim`` positions send into
the output projection; ``obs`` removes a head's block of positions at once (block OBS: the cost
of dropping positions ``B`` and re-solving the rest is ``tr(W_B^T [H^-1]_BB^-1 W_B)``).

Scores are comparable only within a group: each group is ranked on its own. For the ``global``
allocation (:func:`onnxcompress.structured.allocation.allocate`), :func:`importance` also fills
``costs``: each channel's *marginal* cost as a share of its group's total, comparable across
groups. For ``obs`` that is the increase of the consumers' squared output error (after re-solving
the remaining weights) relative to their output energy ``tr(W^T H W)``, in the greedy removal
order: the per-layer error curve the refit then realises. For the other criteria it is the
channel's score over the group's summed score (``activation``: its share of the energy sent into
the next layer).
Pure numpy over the model's constants.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxcompress.calibration.capture import get_tensor
from onnxcompress.errors import ConfigError
from onnxcompress.structured.graph import Analysis, Consumer, Group

CRITERIA = ("l1", "l2", "bn", "activation", "obs")


def _per_position(w: np.ndarray, axis: int, order: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0).reshape(w.shape[axis], -1)
    return moved.sum(axis=1) if order == 1 else (moved**2).sum(axis=1)


def importance(
    model: onnx.ModelProto,
    analysis: Analysis,
    group: Group,
    criterion: str = "l1",
    channel_energy: Mapping[int, np.ndarray] | None = None,
    hessians: Mapping[int, np.ndarray] | None = None,
    costs: dict[int, float] | None = None,
) -> dict[int, float]:
    """Score of each channel class of ``group`` (higher = more important).

    ``channel_energy``: per consumer node index, ``E[x^2]`` of each position of its weight's input
    axis, from calibration (required for ``activation``); ``hessians``: per MatMul / Gemm
    consumer, ``E[[x, 1][x, 1]^T]`` (for ``obs``). ``costs``, when given, is filled with each
    class's normalised marginal cost (see the module docstring).
    """
    scores = _importance(model, analysis, group, criterion, channel_energy, hessians, costs)
    if costs is not None and not any(c in costs for c in group.classes):
        total = sum(scores.values())
        for c, v in scores.items():
            costs[c] = v / total if total > 0 else 0.0
    return scores


def _importance(
    model: onnx.ModelProto,
    analysis: Analysis,
    group: Group,
    criterion: str,
    channel_energy: Mapping[int, np.ndarray] | None,
    hessians: Mapping[int, np.ndarray] | None,
    costs: dict[int, float] | None,
) -> dict[int, float]:
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
    scores = {c: 0.0 for c in group.classes}

    def add(ids: np.ndarray, values: np.ndarray) -> None:
        for cls, v in zip(analysis.classes_of(ids).tolist(), values.tolist(), strict=True):
            if cls in scores:
                scores[cls] += float(v)

    if criterion == "obs":
        if channel_energy is None or hessians is None:
            raise ConfigError("the obs criterion needs calibration data (--calibration-data)")
        ranked = _obs_order(model, analysis, group, hessians, costs)
        if ranked is not None:
            return ranked
        criterion = "activation"
    if criterion == "activation" and channel_energy is not None:
        used = False
        for c in group.consumers:
            energy = channel_energy.get(c.node)
            if energy is None:
                continue
            w = get_tensor(model, c.weight)
            add(c.ids, energy * _per_position(w, c.axis, 2))
            used = True
        if used:
            return scores
        criterion = "l2"
    elif criterion == "activation":
        raise ConfigError("the activation criterion needs calibration data (--calibration-data)")
    if criterion == "bn":
        bn = _bn_scales(model, analysis, group)
        if bn:
            for ids, gamma in bn:
                add(ids, np.abs(gamma.astype(np.float64)))
            return scores
        criterion = "l1"
    order = 1 if criterion == "l1" else 2
    for s in group.sources:
        w = get_tensor(model, s.weight)
        add(s.ids, _per_position(w, s.axis, order))
    if group.kind == "heads":  # a head's weights: its Q/K/V columns and its rows of the output projection
        for c in group.consumers:
            add(c.ids, _per_position(get_tensor(model, c.weight), c.axis, order))
    return scores


def _bn_scales(
    model: onnx.ModelProto, analysis: Analysis, group: Group
) -> list[tuple[np.ndarray, np.ndarray]]:
    members = set(group.classes)
    scales = {n.input[1] for n in model.graph.node if n.op_type == "BatchNormalization" and len(n.input) > 1}
    out = []
    for s in analysis.slicings:
        if s.tensor in scales and len(s.ids) and int(analysis.classes_of(s.ids[:1])[0]) in members:
            out.append((s.ids, get_tensor(model, s.tensor)))
    return out


def _obs_consumer(model: onnx.ModelProto, c: Consumer, hess: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A consumer's OBS state: the damped inverse Hessian, its weight as float64 rows (input
    positions first) with a zero bias row appended (never removed, it absorbs the means), and the
    output energy ``tr(W^T H W)`` the removal costs are measured against."""
    w = np.moveaxis(get_tensor(model, c.weight).astype(np.float64), c.axis, 0)
    w = w.reshape(w.shape[0], -1)
    n = w.shape[0]
    damp = 1e-4 * float(np.mean(np.diag(hess)[:n])) + 1e-12
    hinv = np.linalg.inv(hess + damp * np.eye(n + 1))
    w = np.vstack([w, np.zeros((1, w.shape[1]))])
    return hinv, w, float(np.einsum("ij,ik,kj->", w, hess, w))


def _obs_order(
    model: onnx.ModelProto,
    analysis: Analysis,
    group: Group,
    hessians: Mapping[int, np.ndarray],
    costs: dict[int, float] | None = None,
) -> dict[int, float] | None:
    """Greedy OBS removal order of the group's classes as scores (removed first = lowest), or None
    when a consumer is not a MatMul / Gemm with one input position per class. ``costs`` (when
    given) gets each removal's error increase over the consumers' output energy."""
    terms = []
    output_energy = 0.0
    index = {c: k for k, c in enumerate(group.classes)}
    for c in group.consumers:
        hess = hessians.get(c.node)
        if hess is None:
            return None
        classes = analysis.classes_of(c.ids)
        pos = [k for k, cls in enumerate(classes.tolist()) if cls in index]
        if len({int(classes[k]) for k in pos}) != len(pos):
            if group.kind == "heads":
                return _block_obs_order(model, analysis, group, hessians, costs)
            return None  # a class spans several positions (flattened into a Gemm)
        hinv, w, energy = _obs_consumer(model, c, hess)
        output_energy += energy
        terms.append((hinv, w, np.array([index[int(classes[k])] for k in pos]), np.array(pos)))
    if not terms:
        return None
    n_cls = len(group.classes)
    alive = np.array([cls not in group.fixed for cls in group.classes])
    scores = {cls: float(n_cls) for cls in group.classes}
    for step in range(int(alive.sum())):
        cost = np.zeros(n_cls)
        for hinv, w, cls_idx, at in terms:
            d = np.maximum(np.diag(hinv)[at], 1e-30)
            np.add.at(cost, cls_idx, (w[at] ** 2).sum(axis=1) / d)
        cost[~alive] = np.inf
        j = int(np.argmin(cost))
        alive[j] = False
        scores[group.classes[j]] = float(step)
        if costs is not None:
            costs[group.classes[j]] = float(cost[j]) / max(output_energy, 1e-30)
        for hinv, w, cls_idx, at in terms:
            p = int(at[cls_idx == j][0]) if (cls_idx == j).any() else -1
            if p < 0:
                continue
            col = hinv[:, p].copy()
            piv = max(col[p], 1e-30)
            w -= np.outer(col / piv, w[p])
            hinv -= np.outer(col / piv, hinv[p])
            w[p] = 0.0
            hinv[p, :] = 0.0
            hinv[:, p] = 0.0
    if costs is not None:
        for cls in group.classes:
            costs.setdefault(cls, float("inf"))  # fixed classes: never removed
    return scores


def _block_obs_order(
    model: onnx.ModelProto,
    analysis: Analysis,
    group: Group,
    hessians: Mapping[int, np.ndarray],
    costs: dict[int, float] | None = None,
) -> dict[int, float] | None:
    """:func:`_obs_order` for classes that own a block of positions (attention heads): removing
    block ``B`` and re-solving the rest costs ``tr(W_B^T [H^-1]_BB^-1 W_B)``; the cheapest head
    goes first, then ``W`` and ``H^-1`` are updated for the whole block."""
    index = {c: k for k, c in enumerate(group.classes)}
    terms = []
    output_energy = 0.0
    for c in group.consumers:
        hess = hessians.get(c.node)
        if hess is None:
            return None
        classes = analysis.classes_of(c.ids).tolist()
        blocks: dict[int, np.ndarray] = {}
        for k, cls in enumerate(classes):
            if cls in index:
                blocks.setdefault(index[cls], np.zeros(0, np.int64))
                blocks[index[cls]] = np.append(blocks[index[cls]], k)
        hinv, w, energy = _obs_consumer(model, c, hess)
        output_energy += energy
        terms.append((hinv, w, blocks))
    if not terms:
        return None
    n_cls = len(group.classes)
    alive = np.array([cls not in group.fixed for cls in group.classes])
    scores = {cls: float(n_cls) for cls in group.classes}
    for step in range(int(alive.sum())):
        cost = np.full(n_cls, np.inf)
        for j in map(int, np.flatnonzero(alive)):
            total = 0.0
            for hinv, w, blocks in terms:
                b = blocks.get(j)
                if b is None:
                    continue
                wb = w[b]
                total += float(np.sum(wb * np.linalg.solve(hinv[np.ix_(b, b)], wb)))
            cost[j] = total
        j = int(np.argmin(cost))
        alive[j] = False
        scores[group.classes[j]] = float(step)
        if costs is not None:
            costs[group.classes[j]] = float(cost[j]) / max(output_energy, 1e-30)
        for hinv, w, blocks in terms:
            b = blocks.get(j)
            if b is None:
                continue
            inv_bb = np.linalg.inv(hinv[np.ix_(b, b)])
            cols = hinv[:, b].copy()
            w -= cols @ inv_bb @ w[b]
            hinv -= cols @ inv_bb @ hinv[b, :]
            w[b] = 0.0
            hinv[b, :] = 0.0
            hinv[:, b] = 0.0
    if costs is not None:
        for cls in group.classes:
            costs.setdefault(cls, float("inf"))
    return scores
