"""Encodings of the positions of the kept (non-pruned) weights.

Deep Compression stores the *relative* index (gap to the previous kept weight) in a few bits and
inserts filler entries when a gap overflows; a bitmask costs one bit per position. Which is smaller
depends on the sparsity and on how clustered the kept weights are, so the encoder measures both
(and the dense alternative, where pruned weights simply get code 0) per tensor and keeps the
smallest. All functions here are pure numpy; their inverses mirror the decode operators exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


# positions handled per step: the int64 temporaries of the encoders stay a few MB for any tensor
_CHUNK = 1 << 20

# ``parts``: the kept positions of several weights laid end to end, as (positions, offset) pairs:
# the stream encodes ``positions + offset`` of each part in turn (strictly increasing overall).
Parts = Sequence[tuple[np.ndarray, int]]


def _skip_chunks(parts: Parts) -> Iterator[np.ndarray]:
    """The skips (positions passed over before each kept one), int64, chunk by chunk: the same
    numbers as ``np.diff(positions, prepend=-1) - 1`` of the concatenated positions."""
    prev = -1
    for positions, offset in parts:
        positions = np.asarray(positions).reshape(-1)
        for a in range(0, positions.size, _CHUNK):
            p = positions[a : a + _CHUNK].astype(np.int64)
            p += offset
            skips = np.empty_like(p)
            skips[0] = p[0] - prev
            np.subtract(p[1:], p[:-1], out=skips[1:])
            skips -= 1
            prev = int(p[-1])
            yield skips


def relative_entry_count(positions: np.ndarray, gap_bits: int) -> int:
    """Number of entries (kept weights plus fillers) at a given gap width."""
    filler = (1 << gap_bits) - 1
    return int(positions.size + sum(int(np.sum(s // filler)) for s in _skip_chunks([(positions, 0)])))


def relative_gaps(parts: Parts, gap_bits: int) -> np.ndarray:
    """The uint8 gap stream of :func:`encode_relative` for several weights' positions laid end to
    end (see ``Parts``), built chunk by chunk: no group-wide int64 positions or temporaries."""
    filler = (1 << gap_bits) - 1
    fillers = 0
    for skips in _skip_chunks(parts):
        if skips.min() < 0:
            raise ValueError("positions must be strictly increasing")
        fillers += int(np.sum(skips // filler))
    gaps = np.full(sum(int(np.size(p)) for p, _ in parts) + fillers, filler, dtype=np.uint8)
    at = 0  # entries written so far; every chunk ends on a real entry
    for skips in _skip_chunks(parts):
        fill = skips // filler
        real = np.cumsum(fill + 1)
        real += at - 1
        gaps[real] = (skips - fill * filler).astype(np.uint8)
        at = int(real[-1]) + 1
    return gaps


def encode_relative(positions: np.ndarray, gap_bits: int) -> RelativeIndex:
    """Relative index with fillers; ``positions`` must be strictly increasing and >= 0."""
    gaps = relative_gaps([(positions, 0)], gap_bits)
    source = np.full(gaps.size, -1, dtype=np.int64)
    source[gaps != (1 << gap_bits) - 1] = np.arange(np.size(positions))  # real entries never hold the filler
    return RelativeIndex(gap_bits=gap_bits, gaps=gaps, source=source)


def decode_relative(gaps: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(position of every entry, is-kept flag): the decode operators' CumSum arithmetic."""
    gaps = np.asarray(gaps, dtype=np.int64)
    real = gaps != (1 << gap_bits) - 1
    return np.cumsum(gaps + real) - 1, real


def best_gap_bits(positions: np.ndarray, value_bits: int) -> tuple[int, int]:
    """Gap width minimising the gap stream plus the kept values; returns (gap_bits, bytes).

    The filler counts of all widths come from one pass over the skips (computed once per chunk)."""
    values = (value_bits * positions.size + 7) // 8
    fillers = dict.fromkeys(GAP_BITS_CHOICES, 0)
    for skips in _skip_chunks([(positions, 0)]):
        for g in GAP_BITS_CHOICES:
            fillers[g] += int(np.sum(skips // ((1 << g) - 1)))
    best: tuple[int, int] | None = None
    for g in GAP_BITS_CHOICES:
        nbytes = bitpack.packed_size(positions.size + fillers[g], g) + values
        if best is None or nbytes < best[1]:
            best = (g, nbytes)
    assert best is not None
    return best


def encode_mask(positions: np.ndarray, size: int) -> np.ndarray:
    """1-bit-per-position mask (uint8 0/1, ``size`` entries)."""
    mask = np.zeros(size, dtype=np.uint8)
    mask[np.asarray(positions, dtype=np.int64)] = 1
    return mask


def packed_mask(parts: Parts, size: int) -> np.ndarray:
    """``bitpack.compress(encode_mask(positions, size), 1)`` for several weights' positions laid end
    to end (see ``Parts``), written straight into the packed stream (1 bit, not a byte, per
    position, and no int64 copy of the group's positions)."""
    out = np.zeros(bitpack.packed_size(size, 1), dtype=np.uint8)
    for positions, offset in parts:
        positions = np.asarray(positions).reshape(-1)
        for a in range(0, positions.size, _CHUNK):
            p = positions[a : a + _CHUNK].astype(np.int64)
            p += offset
            byte = p >> 3
            bit = np.left_shift(1, p & 7).astype(np.uint8)  # LSB first, as bitpack packs
            first = np.flatnonzero(np.concatenate([[True], byte[1:] != byte[:-1]]))
            out[byte[first]] |= np.bitwise_or.reduceat(bit, first)  # a byte may span two chunks
    return out


def decode_mask(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.asarray(mask))
