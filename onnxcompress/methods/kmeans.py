"""Deep Compression weight sharing: optional pruning, then a k-means codebook per tensor, channel
or group of channels (``bits``, ``granularity``, ``group_size``, ``init``, ``codebook_dtype``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import codebook, scaled_codebook
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.methods.base import DEFAULT_CONTEXT, Context, Method, codebook_axis
from onnxcompress.methods.masks import keep_mask

if TYPE_CHECKING:
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo


def compress(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, ctx: Context = DEFAULT_CONTEXT
) -> CodebookTensor:
    """Prune by the plan's rule, then fit the codebook to the kept weights (code 0 = exact zero);
    ``granularity: shared``: codes into the context's shared codebook times a scale of its own."""
    if cfg.granularity == "shared":
        shared = (ctx.shared_codebooks or {}).get((cfg.bits, cfg.codebook_dtype))
        if shared is None:
            shared = scaled_codebook.fit_shared(
                [scaled_codebook.normalised_sample(w)], bits=cfg.bits, codebook_dtype=cfg.codebook_dtype,
                seed=ctx.seed,
            )  # fmt: skip
        return scaled_codebook.quantize_scaled(w, shared, bits=cfg.bits)
    return codebook.quantize(
        w, bits=cfg.bits, mask=keep_mask(w, info, cfg, ctx.global_threshold), granularity=cfg.granularity,
        axis=codebook_axis(info, cfg), group_size=cfg.group_size, init=cfg.init,
        codebook_dtype=cfg.codebook_dtype, seed=ctx.seed,
    )  # fmt: skip


def shared_codebooks(
    planned: Sequence[tuple[WeightInfo, WeightConfig]], read: Callable[[str], np.ndarray], seed: int = 0
) -> dict[tuple[int, str], np.ndarray]:
    """The shared codebook of every ``(bits, codebook_dtype)`` that planned ``granularity: shared``
    weights use, fitted on all of them (each normalised by its largest magnitude); ``read(name)``
    gives a weight's array, called once per such weight, one at a time."""
    samples: dict[tuple[int, str], list[np.ndarray]] = {}
    for info, cfg in planned:
        if cfg.granularity == "shared" and cfg.method == METHOD.name and cfg.format == "codebook":
            key = (cfg.bits, cfg.codebook_dtype)
            samples.setdefault(key, []).append(scaled_codebook.normalised_sample(read(info.name)))
    return {
        (bits, dtype): scaled_codebook.fit_shared(parts, bits=bits, codebook_dtype=dtype, seed=seed)
        for (bits, dtype), parts in samples.items()
    }


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
        "codebook_share",
        "encoding",
        "gap_bits",
    ),
    calibrated=True,
)
