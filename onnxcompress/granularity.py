"""Cost-aware codebook granularity: per-channel codebooks only where they pay for themselves.

Why: a codebook costs ``2**bits`` entries (4 bytes each in fp32, 2 in fp16) whatever the number of
weights it serves. Per output channel, a 6-bit codebook is 256 bytes against ``row * 6 / 8`` bytes
of indices: a 3x3 depthwise filter (9 weights, 7 bytes of indices) or a 64x3 conv row (144 bytes)
comes out *larger* than fp32, and the weight is then left uncompressed. Measured on the shipped and
synthetic models (``benchmarks/small_models.py``), ``balanced`` (6-bit per channel) was larger than
``safe`` (8-bit per tensor) on every model and left up to 62% of a model's weights in fp32.

The rule: one codebook per group of ``g`` consecutive channels, ``g`` the smallest number such that
the group's codebook costs at most ``share`` (default 1/8) of the group's indices; per channel when
``g`` is 1, per tensor when ``g`` would reach the number of channels. Large layers keep per-channel
codebooks (a row of 2,731+ weights at 6 bits and fp32 codebooks); small ones share.

Pure arithmetic on shapes: no numpy arrays, no onnx.
"""

from __future__ import annotations

import math

#: largest share of a weight's index bytes its codebooks may take
DEFAULT_SHARE = 1 / 8
_ITEMSIZE = {"float32": 4, "float16": 2}


def codebook_bytes(bits: int, codebook_dtype: str = "float32") -> int:
    """Bytes of one codebook of ``2**bits`` entries."""
    return (1 << bits) * _ITEMSIZE[codebook_dtype]


def tensor_codebook_pays(size: int, bits: int, codebook_dtype: str = "float32", share: float = DEFAULT_SHARE) -> bool:
    """Whether one codebook for a whole weight of ``size`` elements costs at most ``share`` of its
    index bytes (otherwise the weight shares a scaled codebook: ``granularity: shared``)."""
    return codebook_bytes(bits, codebook_dtype) <= share * size * bits / 8


def cost_aware_granularity(
    shape: tuple[int, ...],
    axis: int,
    bits: int,
    codebook_dtype: str = "float32",
    share: float = DEFAULT_SHARE,
    can_share: bool = False,
) -> tuple[str, int]:
    """``("channel", 1)``, ``("group", g)`` or ``("tensor", channels)`` for a weight of ``shape``
    whose output channels lie on ``axis``: the finest granularity whose codebooks cost at most
    ``share`` of the weight's index bytes. With ``can_share`` (the setting allows a shared scaled
    codebook), ``("shared", channels)`` where even one codebook for the whole tensor costs more."""
    granularity, n = _finest(shape, axis, bits, codebook_dtype, share)
    size = math.prod(int(d) for d in shape)
    if granularity == "tensor" and can_share and not tensor_codebook_pays(size, bits, codebook_dtype, share):
        return ("shared", n)
    return (granularity, n)


def _finest(shape: tuple[int, ...], axis: int, bits: int, codebook_dtype: str, share: float) -> tuple[str, int]:
    """:func:`cost_aware_granularity` among channel, group and tensor only."""
    if not 0 < share:
        raise ValueError(f"share must be positive, got {share!r}")
    if not shape:
        return ("tensor", 1)
    channels = int(shape[axis])
    size = math.prod(int(d) for d in shape)
    if channels <= 1 or size == 0:
        return ("tensor", max(channels, 1))
    row_index_bytes = size // channels * bits / 8
    g = math.ceil(codebook_bytes(bits, codebook_dtype) / (share * row_index_bytes))
    if g <= 1:
        return ("channel", 1)
    if g >= channels:
        return ("tensor", channels)
    return ("group", g)
