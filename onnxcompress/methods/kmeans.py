"""Deep Compression weight sharing: optional pruning, then a k-means codebook per tensor, channel
or group of channels (``bits``, ``granularity``, ``group_size``, ``init``, ``codebook_dtype``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import codebook
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.methods.base import DEFAULT_CONTEXT, Context, Method, codebook_axis
from onnxcompress.methods.masks import keep_mask

if TYPE_CHECKING:
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo


def compress(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, ctx: Context = DEFAULT_CONTEXT
) -> CodebookTensor:
    """Prune by the plan's rule, then fit the codebook to the kept weights (code 0 = exact zero)."""
    return codebook.quantize(
        w, bits=cfg.bits, mask=keep_mask(w, info, cfg, ctx.global_threshold), granularity=cfg.granularity,
        axis=codebook_axis(info, cfg), group_size=cfg.group_size, init=cfg.init,
        codebook_dtype=cfg.codebook_dtype, seed=ctx.seed,
    )  # fmt: skip


METHOD = Method(
    name="kmeans",
    label="k-means",
    summary="Deep Compression weight sharing: pruning + a k-means codebook",
    compress=compress,
    fields=(
        "bits",
        "sparsity",
        "pruning",
        "quality",
        "n",
        "m",
        "granularity",
        "group_size",
        "init",
        "codebook_dtype",
        "encoding",
        "gap_bits",
    ),
    calibrated=True,
)
