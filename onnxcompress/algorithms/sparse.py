"""Encodings of the positions of the kept (non-pruned) weights.

Deep Compression stores the *relative* index (gap to the previous kept weight) in a few bits and
inserts filler entries when a gap overflows; a bitmask costs one bit per position. Which is smaller
depends on the sparsity and on how clustered the kept weights are, so the encoder measures both
(and the dense alternative, where pruned weights simply get code 0) per tensor and keeps the
smallest. All functions here are pure numpy; their inverses mirror the decode operators exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcompress.algorithms import bitpack

GAP_BITS_CHOICES = tuple(range(1, 9))


@dataclass(frozen=True)
class RelativeIndex:
    """Entries of the relative index for one flat tensor.

    Gap value ``2**gap_bits - 1`` marks a *filler*: it advances the position by that much and
    stands for no weight, so the code/value streams hold only the kept weights. Any other gap
    value ``d`` means "skip ``d`` positions, then the next kept weight". (Deep Compression's
    fillers instead point at a zero codebook entry, wasting a code per filler.)
    """

    gap_bits: int
    gaps: np.ndarray  # uint8 [entries]
    source: np.ndarray  # int64 [entries]: index of the kept weight, -1 for a filler

    @property
    def entries(self) -> int:
        return int(self.gaps.size)


def _skips(positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.int64)
    return np.diff(positions, prepend=-1) - 1


def relative_entry_count(positions: np.ndarray, gap_bits: int) -> int:
    """Number of entries (kept weights plus fillers) at a given gap width."""
    return int(positions.size + np.sum(_skips(positions) // ((1 << gap_bits) - 1)))


def encode_relative(positions: np.ndarray, gap_bits: int) -> RelativeIndex:
    """Relative index with fillers; ``positions`` must be strictly increasing and >= 0."""
    skips = _skips(positions)
    if skips.size and skips.min() < 0:
        raise ValueError("positions must be strictly increasing")
    filler = (1 << gap_bits) - 1
    fillers = skips // filler
    total = int(positions.size + fillers.sum())
    gaps = np.full(total, filler, dtype=np.uint8)
    source = np.full(total, -1, dtype=np.int64)
    real = np.cumsum(fillers + 1) - 1
    gaps[real] = (skips - fillers * filler).astype(np.uint8)
    source[real] = np.arange(positions.size)
    return RelativeIndex(gap_bits=gap_bits, gaps=gaps, source=source)


def decode_relative(gaps: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(position of every entry, is-kept flag): the decode operators' CumSum arithmetic."""
    gaps = np.asarray(gaps, dtype=np.int64)
    real = gaps != (1 << gap_bits) - 1
    return np.cumsum(gaps + real) - 1, real


def best_gap_bits(positions: np.ndarray, value_bits: int) -> tuple[int, int]:
    """Gap width minimising the gap stream plus the kept values; returns (gap_bits, bytes)."""
    values = (value_bits * positions.size + 7) // 8
    best: tuple[int, int] | None = None
    for g in GAP_BITS_CHOICES:
        nbytes = bitpack.packed_size(relative_entry_count(positions, g), g) + values
        if best is None or nbytes < best[1]:
            best = (g, nbytes)
    assert best is not None
    return best


def encode_mask(positions: np.ndarray, size: int) -> np.ndarray:
    """1-bit-per-position mask (uint8 0/1, ``size`` entries)."""
    mask = np.zeros(size, dtype=np.uint8)
    mask[np.asarray(positions, dtype=np.int64)] = 1
    return mask


def decode_mask(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask))
