"""What every compression method shares: the :class:`Method` record, its :class:`Context`, the
compressed forms a method may return, and the one step that encodes them.

A method is numeric: it turns one weight into a :data:`Compressed` value (a codebook tensor or a
pruned tensor) that decodes exactly (:func:`decompress`). Choosing the storage layout of that value
(dense codes, relative or mask positions, bit widths) is :func:`encode`'s job, the same for every
method, so a new method never touches the encoding or the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from onnxcompress.algorithms import codebook, pruning
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.algorithms.pruning import PrunedTensor
from onnxcompress.encoding import EncodedWeight, encode_codebook, encode_pruned

if TYPE_CHECKING:  # config reads the method table: importing it here at run time would be a cycle
    from onnxcompress.config import WeightConfig
    from onnxcompress.inventory import WeightInfo

__all__ = [
    "DEFAULT_CONTEXT",
    "Compressed",
    "Context",
    "Method",
    "Pruned",
    "codebook_axis",
    "decompress",
    "encode",
]


@dataclass(frozen=True)
class Pruned:
    """Kept values stored raw. ``tensor`` holds the weight with its channel axis ``axis`` moved in
    front (``axis=0``: the weight's own layout); ``shape`` is the weight's original shape."""

    tensor: PrunedTensor
    axis: int
    shape: tuple[int, ...]


#: What a method returns for one weight.
Compressed = CodebookTensor | Pruned


@dataclass(frozen=True)
class Context:
    """What a method may need beyond its own weight and settings.

    ``seed``: the plan's seed (k-means initialisation). ``global_threshold``: the magnitude
    threshold shared by every weight whose plan says ``pruning: global`` (one threshold over all
    of them, computed by :func:`onnxcompress.methods.masks.global_threshold` before any weight is
    compressed). ``shared_codebooks``: likewise for ``granularity: shared``.
    """

    seed: int = 0
    global_threshold: float | None = None
    #: ``granularity: shared``: the shared codebook of each ``(bits, codebook_dtype)``, fitted on
    #: every planned weight that shares it before any is compressed (methods.kmeans.shared_codebooks);
    #: a weight whose key is missing gets a codebook fitted on itself alone
    shared_codebooks: Mapping[tuple[int, str], np.ndarray] | None = None


#: seed 0, no global threshold
DEFAULT_CONTEXT = Context()


CompressFn = Callable[[np.ndarray, "WeightInfo", "WeightConfig", Context], Compressed]


@dataclass(frozen=True)
class Method:
    """One row of the method table (:data:`onnxcompress.methods.METHODS`).

    ``fields``: the :class:`~onnxcompress.config.WeightConfig` settings the method reads (search
    explores only these). ``quantizes``: it stores codebook indices (so ``bits``, ``granularity``
    and the codebook settings apply). ``needs_pruning``: a plan must prune for it to mean anything.
    ``calibrated``: :mod:`onnxcompress.calibration` has a data-aware variant of it; for the others
    calibration leaves the weight to :attr:`compress`.
    """

    name: str
    label: str  # human name, e.g. "CLIP-Q"
    summary: str  # one line, for --help and docs
    compress: CompressFn
    fields: tuple[str, ...]
    quantizes: bool = True
    needs_pruning: bool = False
    calibrated: bool = False


def codebook_axis(info: WeightInfo, cfg: WeightConfig) -> int:
    """The channel axis a codebook method groups by. Only per-channel/group codebooks need it in
    front (contiguous segments); other weights decode in their natural order, which saves a
    Transpose per weight at load time."""
    return info.axis if cfg.granularity not in ("tensor", "shared") else 0


def decompress(c: Compressed) -> np.ndarray:
    """The exact array ``c`` decodes to, in the weight's original layout and dtype."""
    if isinstance(c, Pruned):
        flat = pruning.decompress(c.tensor)
        return flat if c.axis == 0 else np.moveaxis(flat, 0, c.axis)
    return codebook.decompress(c)


def encode(name: str, c: Compressed, *, encoding: str, gap_bits: int | None) -> EncodedWeight:
    """The stored form of ``c`` (the one encode step of every method; ``encoding`` and
    ``gap_bits`` are the plan's position-encoding settings)."""
    if isinstance(c, Pruned):
        return encode_pruned(name, c.tensor, c.axis, shape=c.shape, encoding=encoding, gap_bits=gap_bits)
    return encode_codebook(name, c, encoding=encoding, gap_bits=gap_bits)
