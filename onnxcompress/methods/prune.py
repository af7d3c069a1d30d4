"""Pruning only: the kept values are stored raw (exact), the pruned ones as positions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import pruning
from onnxcompress.methods.base import DEFAULT_CONTEXT, Context, Method, Pruned
from onnxcompress.methods.masks import keep_mask

if TYPE_CHECKING:
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo


def compress(w: np.ndarray, info: WeightInfo, cfg: WeightConfig, ctx: Context = DEFAULT_CONTEXT) -> Pruned:
    """Keep what the plan's pruning rule keeps, in the weight's own layout."""
    mask = keep_mask(w, info, cfg, ctx.global_threshold)
    assert mask is not None  # WeightConfig rejects a prune plan that does not prune
    return Pruned(pruning.compress(w, mask), 0, tuple(w.shape))


METHOD = Method(
    name="prune",
    label="pruning",
    summary="pruning only: kept values stored raw",
    compress=compress,
    fields=("sparsity", "pruning", "quality", "n", "m", "encoding", "gap_bits"),
    quantizes=False,
    needs_pruning=True,
    calibrated=True,
)
