"""Compression methods: one module per technique, found through one table, :data:`METHODS`.

Everything that needs to know the methods reads this table: the CLI's ``--method`` choices, plan
validation (:class:`onnxcompress.config.WeightConfig`), the compressor, calibration (which methods
have a data-aware variant) and search (which settings a method reads).

Adding a method is one new file plus one table row:

1. ``onnxcompress/methods/<name>.py`` with ``compress(weight, info, cfg, ctx) -> Compressed``
   (pure numpy: return a :class:`~onnxcompress.algorithms.codebook.CodebookTensor` or a
   :class:`Pruned`; the encoding, the graph and the container are shared) and a ``METHOD =``
   :class:`Method` record that names the :class:`~onnxcompress.config.WeightConfig` fields it uses;
2. its ``METHOD`` in :data:`METHODS` below.

Settings choices (granularity, k-means init, codebook dtype, pruning rule) are each defined once,
next to the code that implements them: :data:`onnxcompress.algorithms.codebook.GRANULARITIES`,
:data:`onnxcompress.algorithms.kmeans1d.INITS`, :data:`~onnxcompress.algorithms.codebook.CODEBOOK_DTYPES`
and :data:`onnxcompress.methods.masks.PRUNINGS`; :data:`onnxcompress.config.CHOICES` gathers them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.errors import ConfigError
from onnxcompress.methods import clipq, kmeans, prune
from onnxcompress.methods.base import DEFAULT_CONTEXT, Compressed, Context, Method, Pruned, decompress, encode

if TYPE_CHECKING:
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo

__all__ = ["METHODS", "Compressed", "Context", "Method", "Pruned", "compress", "decompress", "encode", "get"]

#: name -> method. The first row is the default.
METHODS: dict[str, Method] = {m.name: m for m in (kmeans.METHOD, clipq.METHOD, prune.METHOD)}


def get(name: str) -> Method:
    """The method called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {name!r}") from None


def compress(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, ctx: Context = DEFAULT_CONTEXT
) -> Compressed:
    """Compress one weight with the method its plan names."""
    return get(cfg.method).compress(w, info, cfg, ctx)
