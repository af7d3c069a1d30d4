"""Which weights pruning keeps: the pruning rules a plan can name, defined once.

``magnitude`` (the smallest ``sparsity`` of each weight), ``global`` (one magnitude threshold over
every weight that uses it), ``std`` (Deep Compression's ``quality x std`` threshold) and ``nm``
(``n`` of every ``m`` consecutive weights along the reduction axis). The plain methods and
calibration both take their masks from :func:`keep_mask`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import pruning

if TYPE_CHECKING:
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo

__all__ = ["PRUNINGS", "global_threshold", "keep_mask"]

PRUNINGS = ("magnitude", "global", "std", "nm")


def keep_mask(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, global_t: float | None
) -> np.ndarray | None:
    """The keep-mask of ``w`` under ``cfg`` (None when ``cfg`` does not prune)."""
    if not cfg.prunes:
        return None
    if cfg.pruning == "magnitude":
        return pruning.magnitude_mask(w, cfg.sparsity)
    if cfg.pruning == "global":
        assert global_t is not None
        return pruning.threshold_mask(w, global_t)
    if cfg.pruning == "std":
        return pruning.threshold_mask(w, pruning.std_threshold(w, cfg.quality))
    if info.role in ("conv", "conv_transpose") and w.ndim > 2:
        # the reduction runs over input channels x kernel window: N:M blocks along that flattened dim
        moved = np.moveaxis(w, info.axis, 0)
        mask = pruning.nm_mask(moved.reshape(moved.shape[0], -1), cfg.n, cfg.m, axis=1)
        return np.moveaxis(mask.reshape(moved.shape), 0, info.axis)
    return pruning.nm_mask(w, cfg.n, cfg.m, axis=info.input_axis)


def global_threshold(
    planned: Sequence[tuple[WeightInfo, WeightConfig]], read: Callable[[str], np.ndarray]
) -> float | None:
    """The one threshold of the ``global`` rule over the planned weights that use it (None when
    none does); ``read(name)`` gives a weight's array, called once per weight, one at a time."""
    uses = [(info.name, cfg.sparsity) for info, cfg in planned if cfg.prunes and cfg.pruning == "global"]
    if not uses:
        return None
    return pruning.global_threshold((read(name) for name, _ in uses), max(s for _, s in uses))
