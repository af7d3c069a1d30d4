"""Codebook (weight-sharing) quantization: the data type the ONNX encoder consumes.

A :class:`CodebookTensor` stores, for each segment (whole tensor, one channel, or a group of channels),
a small table of ``2**bits`` values, and for every weight a ``uint8`` index into its segment's table.
Weights are laid out *channel-major* (``np.moveaxis(w, axis, 0).reshape(-1)``) for every granularity,
so each segment is one contiguous run of codes and the decoder is a single gather.

Exactness contract with the encoder: :func:`decompress` is the reference. The table is stored in a
dtype no wider than what the decoder casts to, so ``codebook[seg, code].astype(dtype)`` only ever keeps
or widens the type; :func:`quantize` rounds centroids to the stored dtype *before* assigning weights,
so what decodes is exactly what the algorithm chose.

Pure numpy (plus ml_dtypes for bfloat16); never imports onnx or onnxruntime.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from onnxcompress.algorithms.kmeans1d import INITS, lloyd_rows
from onnxcompress.errors import ConfigError

__all__ = ["GRANULARITIES", "CodebookTensor", "decompress", "make_segments", "quantize"]

GRANULARITIES = ("tensor", "channel", "group")
CODEBOOK_DTYPES = ("float32", "float16")
_BF16 = np.dtype(ml_dtypes.bfloat16)
_WEIGHT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), _BF16)


@dataclass(frozen=True)
class CodebookTensor:
    """A weight as per-segment codebooks plus one ``uint8`` code per element (channel-major order).

    ``pruned=True`` means code 0 is reserved in every row for an exact ``+0.0`` and is used by exactly
    the pruned positions; kept weights always have codes ``>= 1`` (even when their value rounds to 0).
    """

    shape: tuple[int, ...]  # original weight shape
    dtype: np.dtype  # original weight dtype: float32, float16 or bfloat16
    axis: int  # channel axis (non-negative); data is np.moveaxis(w, axis, 0).reshape(-1)
    segments: np.ndarray  # int64 [S+1], 0 = s0 < s1 < ... < sS = size, channel-major flat offsets
    codebook: np.ndarray  # [S, 2**bits], float32/float16/bfloat16, never wider than dtype when dtype < f32
    codes: np.ndarray  # uint8 [size], channel-major flat order
    bits: int  # 1..8
    pruned: bool  # codebook[:, 0] == 0 and code 0 marks the pruned positions
    # granularity shared (algorithms/scaled_codebook.py): row s is exactly float32(shared) * scales[s];
    # the encoder stores the shared table once per decode group and one scale per segment
    shared: np.ndarray | None = None  # [2**bits], float32 or float16
    scales: np.ndarray | None = None  # float32 [S]

    def __post_init__(self) -> None:
        size = int(np.prod(self.shape, dtype=np.int64))
        s = self.segments
        if s.ndim != 1 or s.size < 2 or s[0] != 0 or s[-1] != size or (np.diff(s) <= 0).any():
            raise ConfigError("CodebookTensor.segments must be strictly increasing from 0 to the tensor size")
        if self.codebook.shape != (s.size - 1, 1 << self.bits):
            raise ConfigError(
                f"CodebookTensor.codebook must have shape ({s.size - 1}, {1 << self.bits}), "
                f"got {self.codebook.shape}"
            )
        if self.codes.dtype != np.uint8 or self.codes.shape != (size,):
            raise ConfigError(f"CodebookTensor.codes must be uint8 of shape ({size},)")
        if (self.shared is None) != (self.scales is None) or (
            self.scales is not None and self.scales.shape != (s.size - 1,)
        ):
            raise ConfigError("CodebookTensor.shared and .scales go together: one scale per segment")

    @property
    def num_segments(self) -> int:
        return int(self.segments.size - 1)

    @property
    def moved_shape(self) -> tuple[int, ...]:
        """Shape of ``np.moveaxis(w, axis, 0)``: the layout in which codes are stored."""
        return (self.shape[self.axis], *self.shape[: self.axis], *self.shape[self.axis + 1 :])

    def segment_ids(self) -> np.ndarray:
        """Segment index of every flat (channel-major) position, int64 [size]."""
        return np.repeat(np.arange(self.num_segments, dtype=np.int64), np.diff(self.segments))


def decompress(t: CodebookTensor) -> np.ndarray:
    """Exact reference decoder; the ONNX decode function must reproduce this bit for bit.

    ``codebook[segment_ids(), codes].astype(dtype)``, gathered chunk by chunk straight into the
    output, so the only full-size array is the result (no int64 segment ids, no second copy).
    """
    flat = np.empty(t.codes.size, dtype=t.dtype)
    for a, b in _element_chunks(flat.size):
        flat[a:b] = t.codebook[_segment_ids(t.segments, a, b), t.codes[a:b]]
    return np.moveaxis(flat.reshape(t.moved_shape), 0, t.axis)


# ------------------------------------------------------------------------------------ validation


def check_weight(w: np.ndarray) -> np.ndarray:
    """Validate a weight for every codebook method (CLIP-Q too): float dtype, finite, non-empty."""
    w = np.asarray(w)
    if w.dtype not in _WEIGHT_DTYPES:
        raise ConfigError(
            f"codebook quantization supports float32, float16 and bfloat16 weights, got {w.dtype}; "
            "cast the weight to float32 first"
        )
    if w.ndim == 0 or w.size == 0:
        raise ConfigError(
            f"cannot build a codebook for a weight of shape {w.shape}; skip scalars and empty weights"
        )
    if not np.isfinite(w.astype(np.float32)).all():
        raise ConfigError("weight contains NaN or Inf; fix the model before quantizing it")
    return w


def check_bits(bits: int) -> int:
    """Validate a code width; shared so every method refuses the same widths with the same words."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not (1 <= bits <= 8):
        raise ConfigError(f"bits must be an integer in 1..8 (codes are uint8), got {bits!r}")
    return int(bits)


def check_axis(axis: int, ndim: int, shape: tuple[int, ...]) -> int:
    """Normalize a channel axis (negative allowed) so methods agree on which axis rows follow."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not (-ndim <= axis < ndim):
        raise ConfigError(f"axis {axis!r} is out of range for a weight of shape {shape}")
    return int(axis) % ndim


def store_dtype(weight_dtype: np.dtype, codebook_dtype: str) -> np.dtype:
    """Dtype of the stored table: the requested one, or the weight's own when that is narrower.

    fp16 and bf16 weights keep their own dtype (a float16 table could not be cast to bfloat16 exactly,
    and a float32 table would be wider than what it decodes to).
    """
    if codebook_dtype not in CODEBOOK_DTYPES:
        raise ConfigError(
            f"codebook_dtype must be one of {', '.join(CODEBOOK_DTYPES)}, got {codebook_dtype!r}"
        )
    if weight_dtype in (np.dtype(np.float16), _BF16):
        return np.dtype(weight_dtype)
    return np.dtype(codebook_dtype)


def make_segments(shape: tuple[int, ...], axis: int, granularity: str, group_size: int = 1) -> np.ndarray:
    """Segment boundaries in channel-major flat order: [0, n] (tensor), per channel, or per channel group."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    n = int(np.prod(shape, dtype=np.int64))
    if granularity == "tensor":
        return np.array([0, n], dtype=np.int64)
    c = int(shape[axis])
    per = n // c
    if granularity == "channel":
        return np.arange(c + 1, dtype=np.int64) * per
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ConfigError(f"group_size must be a positive integer number of channels, got {group_size!r}")
    g = int(group_size)
    ng = -(-c // g)
    return np.minimum(np.arange(ng + 1, dtype=np.int64) * g, c) * per


def _check_same_shape(a: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    if a.shape != shape:
        raise ConfigError(f"{name} shape {a.shape} does not match weight shape {shape}")
    return a


# ---------------------------------------------------------------------- order-preserving float keys


def f32_key(v32: np.ndarray) -> np.ndarray:
    """Map float32 values to int64 keys with the same order (``-0.0`` sorts just below ``+0.0``)."""
    return _f32_key32(v32).astype(np.int64)


def _f32_key32(v32: np.ndarray) -> np.ndarray:
    """:func:`f32_key` as uint32 (the keys fit in 32 bits): half the memory where no segment id
    has to be packed above them."""
    u = np.ascontiguousarray(v32, dtype=np.float32).view(np.uint32)
    flip = (u.view(np.int32) >> 31).view(np.uint32)
    flip |= np.uint32(0x80000000)
    flip ^= u
    return flip


def f32_from_key(key: np.ndarray) -> np.ndarray:
    """Inverse of :func:`f32_key` on the low 32 bits."""
    k = (key & 0xFFFFFFFF).astype(np.uint32)
    flip = ((k >> np.uint32(31)) - np.uint32(1)) | np.uint32(0x80000000)
    return (k ^ flip).view(np.float32)


def _f32_from_key32(k: np.ndarray) -> np.ndarray:
    """:func:`f32_from_key` of uint32 keys, computed in place: ``k`` is consumed."""
    flip = k >> np.uint32(31)
    flip -= np.uint32(1)
    flip |= np.uint32(0x80000000)
    k ^= flip
    return k.view(np.float32)


def _f32_above(t: np.ndarray) -> np.ndarray:
    """Smallest float32 > t (float64 in), as +0.0 rather than -0.0."""
    t32 = t.astype(np.float32)
    low = t32.astype(np.float64) <= t
    t32[low] = np.nextafter(t32[low], np.float32(np.inf))
    return t32 + np.float32(0.0)


# ------------------------------------------------------------------------------------- the core


# Working memory: quantize handles the weight in chunks of about this many elements (whole segments
# where the segments matter), so its int64 temporaries (sort keys, segment ids) stay a few tens of
# MB however large the weight; only a few arrays of the full size are ever alive at once.
_CHUNK = 1 << 20


def _element_chunks(n: int) -> list[tuple[int, int]]:
    return [(a, min(a + _CHUNK, n)) for a in range(0, n, _CHUNK)]


def _segment_chunks(segments: np.ndarray) -> list[tuple[int, int]]:
    """Runs ``[s0, s1)`` of whole segments of about ``_CHUNK`` elements (a bigger segment alone)."""
    chunk = _CHUNK
    out: list[tuple[int, int]] = []
    s, s0 = segments.size - 1, 0
    while s0 < s:
        s1 = int(np.searchsorted(segments, segments[s0] + chunk, side="right")) - 1
        s1 = min(max(s1, s0 + 1), s)
        out.append((s0, s1))
        s0 = s1
    return out


def _segment_ids(segments: np.ndarray, a: int, b: int) -> np.ndarray:
    """Segment index (int64) of the flat positions ``a .. b-1``."""
    lo = int(np.searchsorted(segments, a, side="right")) - 1
    hi = int(np.searchsorted(segments, b, side="left"))
    lengths = np.diff(np.clip(segments[lo : hi + 1], a, b))
    return np.repeat(np.arange(lo, hi, dtype=np.int64), lengths)


@dataclass
class Layout:
    flat32: np.ndarray  # float32 [n], channel-major, -0.0 folded into +0.0
    keep: np.ndarray | None  # bool [n] or None (= all kept)
    segments: np.ndarray
    axis: int

    @functools.cached_property
    def seg(self) -> np.ndarray:
        """int64 [n] segment id of every position (8 bytes per weight: built only when asked for;
        :func:`quantize` works chunk by chunk without it)."""
        return np.repeat(np.arange(self.segments.size - 1, dtype=np.int64), np.diff(self.segments))


def layout(w: np.ndarray, mask: np.ndarray | None, axis: int, segments: np.ndarray) -> Layout:
    """Flatten ``w`` channel-major once, so k-means and CLIP-Q fit rows on the same copy."""
    moved = np.moveaxis(w, axis, 0)
    flat32 = np.empty(w.size, dtype=np.float32)
    flat32.reshape(moved.shape)[...] = moved  # one copy, cast on the way
    flat32 += np.float32(0.0)
    keep = None
    if mask is not None:
        if mask.dtype != np.bool_:
            raise ConfigError(f"mask must be a bool array (True = keep), got dtype {mask.dtype}")
        keep = np.moveaxis(mask, axis, 0).reshape(-1)
        if keep.all():
            keep = None
    return Layout(flat32, keep, segments, axis)


def _row_data(lay: Layout, sample_weight: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct kept values per segment with multiplicities: (vals, wts, row_ptr).

    Computed over runs of whole segments (:func:`_segment_chunks`): composite (segment, value) keys
    never cross a segment, so sorting each run and concatenating equals sorting everything at once.
    A run of one segment sorts 4-byte value keys without a segment part.
    """
    s = lay.segments.size - 1
    sw_all = None
    if sample_weight is not None:
        sw_all = np.moveaxis(sample_weight, lay.axis, 0).reshape(-1).astype(np.float64)
    vals: list[np.ndarray] = []
    wts: list[np.ndarray] = []
    counts = np.zeros(s, dtype=np.int64)
    for s0, s1 in _segment_chunks(lay.segments):
        v, wt, c = _run_rows(lay, s0, s1, sw_all)
        vals.append(v)
        wts.append(wt)
        counts[s0:s1] = c
    row_ptr = np.zeros(s + 1, dtype=np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    return _join(vals), _join(wts), row_ptr


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate and empty ``parts`` (one part: no copy)."""
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    parts.clear()
    return out


def _run_rows(
    lay: Layout, s0: int, s1: int, sw_all: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_row_data` of segments ``s0 .. s1-1``: (vals, wts, distinct count per segment)."""
    a, b = int(lay.segments[s0]), int(lay.segments[s1])
    x = lay.flat32[a:b]
    idx = None if lay.keep is None else np.flatnonzero(lay.keep[a:b])
    if idx is not None:
        x = x[idx]
    sg = None  # local segment ids; None for a single segment
    if s1 - s0 > 1 or sw_all is not None:
        sg = _segment_ids(lay.segments, a, b) - s0
        if idx is not None:
            sg = sg[idx]
    keys = _f32_key32(x)
    if sg is not None:
        keys = keys.astype(np.int64)
        keys |= sg << 32
    if sw_all is None:
        keys.sort()
        ks = keys
    else:
        assert sg is not None
        sw = sw_all[a:b] if idx is None else sw_all[a:b][idx]
        # A segment whose kept weights all have zero importance falls back to plain k-means.
        dead = np.bincount(sg, weights=sw, minlength=s1 - s0) <= 0
        sw = np.where(dead[sg], 1.0, sw)
        pos = sw > 0
        keys, sw = keys[pos], sw[pos]
        order = np.argsort(keys, kind="stable")
        ks, sw = keys[order], sw[order]
    del keys, x, idx
    if not ks.size:
        return np.zeros(0), np.zeros(0), np.zeros(s1 - s0, dtype=np.int64)
    first = np.empty(ks.size, dtype=bool)
    first[0] = True
    np.not_equal(ks[1:], ks[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    del first
    if sw_all is None:
        wts = np.empty(starts.size)
        np.subtract(starts[1:], starts[:-1], out=wts[:-1])
        wts[-1] = ks.size - starts[-1]
    else:
        wts = np.add.reduceat(sw, starts)
    ukeys = ks[starts]
    del ks, starts
    if s1 - s0 == 1:
        counts = np.array([ukeys.size], dtype=np.int64)
    else:
        counts = np.bincount((ukeys >> 32).astype(np.int64), minlength=s1 - s0)
    k32 = ukeys if ukeys.dtype == np.uint32 else (ukeys & 0xFFFFFFFF).astype(np.uint32)
    del ukeys
    vals = _f32_from_key32(k32).astype(np.float64)
    return vals, wts, counts


def round_table(cent: np.ndarray, sdt: np.dtype) -> np.ndarray:
    """Round fitted centroids to the stored codebook dtype, refusing ones that overflow it."""
    with np.errstate(over="ignore"):
        r = cent.astype(sdt)
    if not np.isfinite(r.astype(np.float32)).all():
        raise ConfigError(
            f"a codebook entry overflows {np.dtype(sdt).name}; use codebook_dtype='float32' for this weight"
        )
    return r


def _compact_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row, drop duplicates, pad with the last distinct value: (rows float64, distinct counts)."""
    t = np.sort(table.astype(np.float64), axis=1)
    distinct = np.concatenate([np.ones((t.shape[0], 1), bool), t[:, 1:] != t[:, :-1]], axis=1)
    order = np.argsort(~distinct, axis=1, kind="stable")
    out = np.take_along_axis(t, order, axis=1)
    nd = distinct.sum(axis=1)
    col = np.arange(t.shape[1])[None, :]
    last = out[np.arange(t.shape[0]), nd - 1][:, None]
    return np.where(col < nd[:, None], out, last), nd


def _thresholds(table: np.ndarray, nd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted composite (row, value) keys of every row's decision thresholds, and the index where
    each row's thresholds start."""
    s, L = table.shape
    j = np.arange(L - 1)[None, :]
    valid = j < (nd - 1)[:, None]
    mids = 0.5 * (table[:, :-1] + table[:, 1:])
    rows = np.broadcast_to(np.arange(s, dtype=np.int64)[:, None], mids.shape)[valid]
    tkeys = (rows << 32) | f32_key(_f32_above(mids[valid]))
    tstart = np.searchsorted(tkeys, np.arange(s, dtype=np.int64) << 32, side="left")
    return tkeys, tstart


def assign_nearest(flat32: np.ndarray, seg: np.ndarray, table: np.ndarray, nd: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of each element's row (ties: lower), for compacted sorted rows.

    Exact for float32-representable values: thresholds are the smallest float32 above each midpoint,
    compared through order-preserving integer keys, so one global searchsorted serves all rows.
    """
    tkeys, tstart = _thresholds(table, nd)
    ekeys = (seg << 32) | f32_key(flat32)
    return np.searchsorted(tkeys, ekeys, side="right") - tstart[seg]


def _assign_codes(lay: Layout, table: np.ndarray, nd: np.ndarray) -> np.ndarray:
    """uint8 codes of the whole weight: :func:`assign_nearest` chunk by chunk (shifted by one past
    the zero entry and written only at kept positions when pruned), without full-size int64 keys."""
    tkeys, tstart = _thresholds(table, nd)
    n = lay.flat32.size
    codes = np.zeros(n, dtype=np.uint8)
    for a, b in _element_chunks(n):
        x, sg = lay.flat32[a:b], _segment_ids(lay.segments, a, b)
        sel = None if lay.keep is None else lay.keep[a:b]
        if sel is not None:
            x, sg = x[sel], sg[sel]
        ekeys = f32_key(x)
        ekeys |= sg << 32
        c = np.searchsorted(tkeys, ekeys, side="right")
        c -= tstart[sg]
        if sel is None:
            codes[a:b] = c
        else:
            codes[a:b][sel] = c + 1
    return codes


def _book(learned: np.ndarray, bits: int, pruned: bool) -> np.ndarray:
    """The stored table [S, 2**bits]: the learned entries, after an exact zero when pruned."""
    book = np.zeros((learned.shape[0], 1 << bits), dtype=learned.dtype)
    book[:, int(pruned) :] = learned
    return book


def build(
    w: np.ndarray,
    axis: int,
    segments: np.ndarray,
    bits: int,
    pruned: bool,
    learned: np.ndarray,
    codes_learned: np.ndarray,
    keep: np.ndarray | None,
) -> CodebookTensor:
    """Assemble a CodebookTensor from per-row learned entries (already in the store dtype)."""
    book = _book(learned, bits, pruned)
    if pruned:
        codes = np.zeros(w.size, dtype=np.uint8)
        codes[keep] = (codes_learned + 1).astype(np.uint8)
    else:
        codes = codes_learned.astype(np.uint8)
    return CodebookTensor(
        shape=tuple(w.shape),
        dtype=w.dtype,
        axis=axis,
        segments=segments,
        codebook=book,
        codes=codes,
        bits=bits,
        pruned=pruned,
    )


def quantize(
    w: np.ndarray,
    *,
    bits: int,
    mask: np.ndarray | None = None,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int = 1,
    init: str = "linear",
    codebook_dtype: str = "float32",
    sample_weight: np.ndarray | None = None,
    seed: int = 0,
) -> CodebookTensor:
    """k-means weight sharing (Deep Compression, stage 2), per tensor, channel or channel group.

    With a mask that prunes anything, code 0 is the exact zero in every row and the kept weights share
    the other ``2**bits - 1`` entries, learned from kept weights only -- pruned weights would otherwise
    drag centroids towards zero and waste levels. Centroids are rounded to the stored dtype first and
    weights then take the nearest rounded entry, so ``decompress`` is exactly the decision made here.
    Rows are sorted ascending (after the zero) and rows with fewer distinct centroids than slots repeat
    their last entry.
    """
    w = check_weight(w)
    bits = check_bits(bits)
    axis = check_axis(axis, w.ndim, w.shape)
    if init not in INITS:
        raise ConfigError(f"unknown k-means init {init!r}; use one of {', '.join(INITS)}")
    sdt = store_dtype(w.dtype, codebook_dtype)
    segments = make_segments(w.shape, axis, granularity, group_size)
    mask = _check_same_shape(mask, w.shape, "mask")
    sample_weight = _check_same_shape(sample_weight, w.shape, "sample_weight")
    if sample_weight is not None:
        sw = np.asarray(sample_weight, dtype=np.float64)
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ConfigError("sample_weight must be finite and non-negative")
        sample_weight = sw

    lay = layout(w, mask, axis, segments)
    pruned = lay.keep is not None
    levels = (1 << bits) - int(pruned)
    vals, wts, row_ptr = _row_data(lay, sample_weight)
    del lay  # a float32 copy of the weight: rebuilt below rather than held through k-means

    cent = lloyd_rows(vals, wts, row_ptr, levels, init=init, max_iter=300, tol=0.0, seed=seed)
    del vals, wts
    table, nd = _compact_rows(round_table(cent, sdt))
    lay = layout(w, mask, axis, segments)
    return CodebookTensor(
        shape=tuple(w.shape), dtype=w.dtype, axis=axis, segments=segments,
        codebook=_book(table.astype(sdt), bits, pruned), codes=_assign_codes(lay, table, nd),
        bits=bits, pruned=pruned,
    )  # fmt: skip
