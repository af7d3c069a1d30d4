"""Channel importance: which channel classes of a group to remove first.

* ``l1`` / ``l2``: the norm of each source's output filter (Li et al. 2017, "Pruning Filters for
  Efficient ConvNets"), summed over the sources a class stands for (every branch of a residual
  sum);
* ``bn``: the magnitude of the BatchNormalization scale that follows (Liu et al. 2017, network
  slimming), ``l1`` where a group has no BatchNormalization;
* ``activation`` (needs calibration statistics): the energy a channel sends into the next layer,
  ``E[x_c^2] * ||W_next[:, c]||^2`` summed over its consumers: the part of the consumer's output
  that removing the channel takes away (with zero-mean error terms assumed independent). Groups
  without calibrated consumers fall back to ``l2``.

Scores are comparable only within a group: each group is ranked on its own.
Pure numpy over the model's constants.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from onnxcompress.calibration.capture import get_tensor
from onnxcompress.errors import ConfigError
from onnxcompress.structured.graph import Analysis, Group

CRITERIA = ("l1", "l2", "bn", "activation")


def _per_position(w: np.ndarray, axis: int, order: int) -> np.ndarray:
    moved = np.moveaxis(np.abs(w.astype(np.float64)), axis, 0).reshape(w.shape[axis], -1)
    return moved.sum(axis=1) if order == 1 else (moved**2).sum(axis=1)


def importance(
    model: onnx.ModelProto,
    analysis: Analysis,
    group: Group,
    criterion: str = "l1",
    channel_energy: Mapping[int, np.ndarray] | None = None,
) -> dict[int, float]:
    """Score of each channel class of ``group`` (higher = more important).

    ``channel_energy``: per consumer node index, ``E[x^2]`` of each position of its weight's input
    axis, from calibration (required for ``activation``).
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
    scores = {c: 0.0 for c in group.classes}

    def add(ids: np.ndarray, values: np.ndarray) -> None:
        for cls, v in zip(analysis.classes_of(ids).tolist(), values.tolist(), strict=True):
            if cls in scores:
                scores[cls] += float(v)

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
