"""CLIP-Q: clip the smallest ``sparsity`` of the weights to zero and split the range of the rest into
``2**bits`` equal intervals whose means are the codebook (its own pruning: ``pruning`` is unused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import clipq
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.methods.base import DEFAULT_CONTEXT, Context, Method, codebook_axis

if TYPE_CHECKING:
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo


def compress(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, ctx: Context = DEFAULT_CONTEXT
) -> CodebookTensor:
    """Clip and quantize in one step (deterministic: ``ctx`` is not needed)."""
    return clipq.compress(
        w, sparsity=cfg.sparsity, bits=cfg.bits, granularity=cfg.granularity, axis=codebook_axis(info, cfg),
        group_size=cfg.group_size, codebook_dtype=cfg.codebook_dtype,
    )  # fmt: skip


METHOD = Method(
    name="clipq",
    label="CLIP-Q",
    summary="CLIP-Q clip-and-quantize: prune the smallest, equal intervals for the rest",
    compress=compress,
    fields=("bits", "sparsity", "granularity", "group_size", "codebook_dtype", "encoding", "gap_bits"),
)
