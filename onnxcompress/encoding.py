"""From a weight's compressed form to the streams of one decode operator (pure numpy).

A weight is first encoded on its own (:func:`encode_codebook`, :func:`encode_pruned`), which
picks the smallest of the dense, relative-index and bitmask forms for that tensor. Weights that
share an operator, bit widths and output type are then concatenated into a :class:`Group` that
one decode node reconstructs: onnxruntime's load time grows with the number of decode calls, so
5,000 small weights must not become 5,000 decode nodes. A large model with few weights goes the
other way (:func:`solo_calls`): a shared call needs each position's codebook row, and onnxruntime
holds those per-position arrays until constant folding ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from onnxcompress.algorithms import bitpack, sparse
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.algorithms.pruning import PrunedTensor
from onnxcompress.errors import EncodingError
from onnxcompress.ops import OpSpec, get_op

MAX_GROUP_ELEMENTS = 1 << 26  # 256 MiB of fp32 per decode output: far below ORT's 1 GiB fold limit
_CHUNK = 1 << 20  # positions found per step in _nonzero_positions
#: :func:`solo_calls`: one decode call per weight for models with at least this many elements to
#: encode and at most SOLO_MAX_WEIGHTS weights
SOLO_MIN_ELEMENTS = 1 << 20
SOLO_MAX_WEIGHTS = 256


def itemsize(dtype: np.dtype | str) -> int:
    return np.dtype(dtype).itemsize


@dataclass(frozen=True, kw_only=True)
class WeightSlot:
    """Where one weight sits in its group's decoded output, and how to cut it back out.

    The weight is stored channel-major: the channel axis ``axis`` of ``shape`` moved to the front
    and flattened, ``size`` elements of ``dtype``. A group keeps only this of each weight once its
    streams are assembled (what the graph pass and host decode need)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axis: int
    size: int

    @property
    def moved_shape(self) -> tuple[int, ...]:
        s = list(self.shape)
        return (s.pop(self.axis), *s) if s else ()

    def slot(self) -> WeightSlot:
        """Just the placement (drops an encoding's arrays)."""
        return WeightSlot(name=self.name, shape=self.shape, dtype=self.dtype, axis=self.axis, size=self.size)


@dataclass(frozen=True, kw_only=True)
class WeightEncoding(WeightSlot):
    """What every encoding kind has, for grouping and reporting.

    ``op_type`` is the decode operator (:data:`onnxcompress.ops.DECODE_OPS`) that reconstructs it,
    ``kind`` how positions are stored: ``dense`` (a code for every position), ``relative`` or
    ``mask`` (codes or values only for the kept positions). ``nbytes``: payload bytes of this
    weight in its chosen form.
    """

    op_type: ClassVar[str]
    kind: ClassVar[str]
    nbytes: int

    @property
    def group_key(self) -> tuple[object, ...]:
        """Weights with equal keys can share one decode node."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class CodebookWeight(WeightEncoding):
    """A weight quantized to a ``bits``-bit codebook per segment (channel, group or tensor)."""

    bits: int
    codebook: np.ndarray  # [S, 2**bits]
    segments: np.ndarray  # int64 [S+1], local
    codes: np.ndarray  # uint8: [size] when dense, one per kept position otherwise

    @property
    def group_key(self) -> tuple[object, ...]:
        return (self.op_type, self.bits, np.dtype(self.dtype).str, self.codebook.dtype.str)


@dataclass(frozen=True, kw_only=True)
class CodebookDense(CodebookWeight):
    """A code for every position (``CodebookDense``)."""

    op_type: ClassVar[str] = "CodebookDense"
    kind: ClassVar[str] = "dense"


@dataclass(frozen=True, kw_only=True)
class CodebookScaled(CodebookWeight):
    """A code for every position into a codebook shared by the whole group, times the segment's
    scale (``CodebookScaled``; ``granularity: shared``). ``codebook`` is the shared table
    ``[1, 2**bits]``; ``nbytes`` counts the codes, the scales and the segment bounds, not the
    shared table (stored once per group)."""

    op_type: ClassVar[str] = "CodebookScaled"
    kind: ClassVar[str] = "dense"
    scales: np.ndarray  # float32 [S]

    @property
    def group_key(self) -> tuple[object, ...]:
        return (*super().group_key, self.codebook.tobytes())


@dataclass(frozen=True, kw_only=True)
class CodebookRelative(CodebookWeight):
    """Codes of the kept ``positions``, placed by a ``gap_bits`` relative index (``CodebookRelative``)."""

    op_type: ClassVar[str] = "CodebookRelative"
    kind: ClassVar[str] = "relative"
    gap_bits: int
    positions: np.ndarray  # kept positions: int32, int64 from 2^31 elements

    @property
    def group_key(self) -> tuple[object, ...]:
        return (*super().group_key, self.gap_bits)


@dataclass(frozen=True, kw_only=True)
class CodebookMask(CodebookWeight):
    """Codes of the kept ``positions``, placed by a 1-bit mask (``CodebookMask``)."""

    op_type: ClassVar[str] = "CodebookMask"
    kind: ClassVar[str] = "mask"
    positions: np.ndarray


@dataclass(frozen=True, kw_only=True)
class SparseWeight(WeightEncoding):
    """A pruned weight whose kept ``values`` are stored raw (no codebook)."""

    values: np.ndarray  # [len(positions)] raw kept values
    positions: np.ndarray

    @property
    def bits(self) -> None:
        """No codebook: reports show no bit width."""
        return None

    @property
    def group_key(self) -> tuple[object, ...]:
        return (self.op_type, np.dtype(self.dtype).str, self.values.dtype.str)


@dataclass(frozen=True, kw_only=True)
class SparseRelative(SparseWeight):
    """Kept values placed by a ``gap_bits`` relative index (``SparseRelative``)."""

    op_type: ClassVar[str] = "SparseRelative"
    kind: ClassVar[str] = "relative"
    gap_bits: int

    @property
    def group_key(self) -> tuple[object, ...]:
        return (*super().group_key, self.gap_bits)


@dataclass(frozen=True, kw_only=True)
class SparseMask(SparseWeight):
    """Kept values placed by a 1-bit mask (``SparseMask``)."""

    op_type: ClassVar[str] = "SparseMask"
    kind: ClassVar[str] = "mask"


EncodedWeight = CodebookDense | CodebookScaled | CodebookRelative | CodebookMask | SparseRelative | SparseMask
"""One weight in channel-major flat order, ready to join a group: one type per decode operator."""


def _choose(
    size: int,
    positions: np.ndarray,
    value_bits: int,
    encoding: str,
    gap_bits: int | None,
    dense_bytes: int | None,
) -> tuple[str, int | None, int]:
    """(kind, gap_bits, payload bytes) of the smallest allowed position encoding."""
    options: list[tuple[int, str, int | None]] = []
    if dense_bytes is not None and encoding in ("auto", "dense"):
        options.append((dense_bytes, "dense", None))
    if positions.size and encoding in ("auto", "relative"):
        g: int
        if gap_bits is None:
            g, nbytes = sparse.best_gap_bits(positions, value_bits)
        else:
            g = gap_bits
            entries = sparse.relative_entry_count(positions, g)
            nbytes = bitpack.packed_size(entries, g) + (value_bits * positions.size + 7) // 8
        options.append((nbytes, "relative", g))
    if positions.size and encoding in ("auto", "mask"):
        options.append((bitpack.packed_size(size, 1) + (value_bits * positions.size + 7) // 8, "mask", None))
    if not options:
        raise EncodingError(f"encoding {encoding!r} cannot represent this tensor (no kept weights?)")
    best = min(options, key=lambda o: o[0])
    return best[1], best[2], best[0]


def position_dtype(size: int) -> np.dtype:
    """The narrowest index type for a tensor of ``size`` elements: kept positions are held until
    the groups are built, and int32 halves them for every tensor below 2^31 elements."""
    return np.dtype(np.int32 if size < 2**31 else np.int64)


def _nonzero_positions(codes: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(codes)`` in :func:`position_dtype`, chunk by chunk (no full int64 copy)."""
    out = np.empty(np.count_nonzero(codes), dtype=position_dtype(codes.size))
    at = 0
    for a in range(0, codes.size, _CHUNK):
        nz = np.flatnonzero(codes[a : a + _CHUNK])
        nz += a
        out[at : at + nz.size] = nz
        at += nz.size
    return out


def encode_codebook(
    name: str, t: CodebookTensor, *, encoding: str = "auto", gap_bits: int | None = None
) -> EncodedWeight:
    """A codebook weight in the smallest of the dense, relative-index and mask forms that
    ``encoding`` allows (``auto``: any); ``gap_bits`` None picks the best relative-index width."""
    size = int(t.codes.size)
    side = t.codebook.nbytes + t.segments.size * 4
    dense_bytes = bitpack.packed_size(size, t.bits)
    kind, g, nbytes = "dense", None, dense_bytes
    positions = None
    if t.pruned:
        positions = _nonzero_positions(t.codes)
        kind, g, nbytes = _choose(size, positions, t.bits, encoding, gap_bits, dense_bytes)
    slot = WeightSlot(name=name, shape=tuple(t.shape), dtype=np.dtype(t.dtype), axis=t.axis, size=size)
    segments = np.asarray(t.segments, dtype=np.int64)
    if t.shared is not None and t.scales is not None:
        if t.pruned:
            raise EncodingError("a shared codebook cannot encode a pruned weight; use granularity tensor")
        return CodebookScaled(
            **vars(slot), bits=t.bits, codebook=np.asarray(t.shared)[None, :], segments=segments,
            codes=t.codes, scales=np.asarray(t.scales, dtype=np.float32),
            nbytes=dense_bytes + 4 * t.scales.size + 4 * (segments.size - 1),
        )  # fmt: skip
    if kind == "dense" or positions is None:
        return CodebookDense(
            **vars(slot), bits=t.bits, codebook=t.codebook, segments=segments, codes=t.codes,
            nbytes=nbytes + side,
        )  # fmt: skip
    codes = t.codes[positions]
    if kind == "relative":
        assert g is not None
        return CodebookRelative(
            **vars(slot), bits=t.bits, codebook=t.codebook, segments=segments, codes=codes,
            positions=positions, gap_bits=g, nbytes=nbytes + side,
        )  # fmt: skip
    return CodebookMask(
        **vars(slot), bits=t.bits, codebook=t.codebook, segments=segments, codes=codes,
        positions=positions, nbytes=nbytes + side,
    )  # fmt: skip


def encode_pruned(
    name: str,
    p: PrunedTensor,
    axis: int,
    *,
    shape: tuple[int, ...],
    encoding: str = "auto",
    gap_bits: int | None = None,
) -> EncodedWeight:
    """A pruned weight with raw kept values. ``p`` holds the channel-major layout of a weight of
    original ``shape`` (channel axis ``axis``); ``dense`` falls back to ``auto`` (no codes)."""
    size = int(np.prod(shape, dtype=np.int64))
    value_bits = 8 * np.dtype(p.values.dtype).itemsize
    kind, g, nbytes = _choose(
        size, p.positions, value_bits, "auto" if encoding == "dense" else encoding, gap_bits, None
    )
    positions = np.asarray(p.positions, dtype=position_dtype(size))
    slot = WeightSlot(name=name, shape=tuple(shape), dtype=np.dtype(p.dtype), axis=axis, size=size)
    values = np.asarray(p.values)
    if kind == "relative":
        assert g is not None
        return SparseRelative(**vars(slot), values=values, positions=positions, gap_bits=g, nbytes=nbytes)
    return SparseMask(**vars(slot), values=values, positions=positions, nbytes=nbytes)


@dataclass
class Group:
    """Several weights decoded by one node: the node's input arrays and attributes.

    ``weights`` are the members' placements in the decoded output, in order; their arrays live in
    ``inputs`` (one per input of the operator's :class:`~onnxcompress.ops.spec.OpSpec`)."""

    op_type: str
    weights: list[WeightSlot] = field(default_factory=list)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # input name -> array
    attrs: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(w.size for w in self.weights)

    @property
    def spec(self) -> OpSpec:
        return get_op(self.op_type)


def solo_ops(weights: Sequence[EncodedWeight]) -> set[str]:
    """Decode operators whose weights each get a call of their own instead of sharing one.

    A shared call finds every position's codebook row through int32 arrays as long as the whole
    group (scatter, cumulative sum, add: 16 bytes per weight element), and onnxruntime keeps every
    folded intermediate until folding ends. A call whose weight has one codebook (one segment)
    needs none of them, once every call of that operator in the model is such a call (the body is
    stored once per model: :func:`onnxcompress.ops.functions.build_function`). Measured on
    MiniLM-L6 at 8 bits (22.5M elements, 38 weights, a stock session, onnxruntime 1.32): session
    create 2.13 s -> 0.50 s and peak RSS 945 -> 413 MB. Each call costs ~1 ms of session create
    (1,000 64x64 weights: 0.97 s against 0.21 s shared) and ~0.2 KB of file, which a model of a
    million elements or more does not notice and a 50x-compressed LeNet would: below
    SOLO_MIN_ELEMENTS or above SOLO_MAX_WEIGHTS weights, everything shares.
    """
    if len(weights) > SOLO_MAX_WEIGHTS or sum(w.size for w in weights) < SOLO_MIN_ELEMENTS:
        return set()
    single: dict[str, bool] = {}
    for w in weights:
        one = isinstance(w, CodebookWeight) and w.segments.size == 2
        single[w.op_type] = single.get(w.op_type, True) and one
    return {op for op, ok in single.items() if ok}


def build_groups(
    weights: Sequence[EncodedWeight], max_elements: int = MAX_GROUP_ELEMENTS, *, solo: set[str] | None = None
) -> list[Group]:
    """Partition weights by group key, chunk each partition, and assemble each chunk's streams.

    ``solo``: decode operators whose weights get a group each (default: :func:`solo_ops`). The groups keep each weight's :class:`WeightSlot` but not its per-element arrays (positions,
    codes, values): those are in the group's streams now, and a caller that drops ``weights``
    afterwards frees them instead of holding the compressed model twice.
    """
    by_key: dict[tuple[object, ...], list[EncodedWeight]] = {}
    # weights sharing trailing dims sit next to each other, so the graph can cut a whole run of
    # them with one Reshape + one Split instead of a Reshape per weight
    for w in sorted(weights, key=lambda w: (len(w.moved_shape), w.moved_shape[1:])):
        by_key.setdefault(w.group_key, []).append(w)
    alone = solo_ops(weights) if solo is None else solo
    groups: list[Group] = []
    for members in by_key.values():
        chunk: list[EncodedWeight] = []
        total = 0
        for w in members:
            if chunk and (w.op_type in alone or total + w.size > max_elements):
                groups.append(_assemble(chunk))
                chunk, total = [], 0
            chunk.append(w)
            total += w.size
        if chunk:
            groups.append(_assemble(chunk))
    return groups


T = TypeVar("T", bound=WeightEncoding)


def _all(ws: Sequence[EncodedWeight], cls: type[T]) -> list[T]:
    """``ws`` as ``cls`` instances (one group holds one kind: its group key says so)."""
    out: list[T] = [w for w in ws if isinstance(w, cls)]
    if len(out) != len(ws):
        raise EncodingError(f"internal error: a {cls.__name__} group holds other kinds; please report it")
    return out


def _kept_positions(w: EncodedWeight) -> np.ndarray:
    if isinstance(w, (CodebookDense, CodebookScaled)):
        raise EncodingError("internal error: a dense weight in a sparse group; please report it")
    return w.positions


def _assemble(ws: Sequence[EncodedWeight]) -> Group:
    first = ws[0]
    size = sum(w.size for w in ws)
    offsets = [int(o) for o in np.cumsum([0] + [w.size for w in ws])[:-1]]
    inputs: dict[str, np.ndarray] = {}
    attrs = {"size": int(size)}
    if isinstance(first, CodebookWeight):
        cws = _all(ws, CodebookWeight)
        attrs["bits"] = int(first.bits)
        if isinstance(first, CodebookScaled):  # one shared table (the group key holds its bytes)
            codebook = first.codebook.reshape(-1)
            inputs["scales"] = np.concatenate([w.scales for w in _all(ws, CodebookScaled)])
        else:
            codebook = np.concatenate([w.codebook for w in cws], axis=0)
        segments = np.concatenate(
            [cws[0].segments[:1]] + [w.segments[1:] + off for w, off in zip(cws, offsets, strict=True)]
        )
        if segments[-1] >= 2**31:
            raise EncodingError("a decode group exceeds 2^31 elements")
        inputs["codebook"] = codebook
        inputs["segments"] = segments.astype(np.int32)
    if isinstance(first, (CodebookDense, CodebookScaled)):
        inputs["codes"] = bitpack.compress_parts([w.codes for w in _all(ws, CodebookWeight)], first.bits)
    else:
        # the group's positions are each weight's plus its offset: the encoders take them per
        # weight, chunk by chunk, instead of one group-wide int64 array
        parts = [(_kept_positions(w), off) for w, off in zip(ws, offsets, strict=True)]
        kept = sum(int(pos.size) for pos, _ in parts)
        if isinstance(first, (CodebookRelative, SparseRelative)):
            gaps = sparse.relative_gaps(parts, first.gap_bits)
            inputs["gaps"] = bitpack.compress(gaps, first.gap_bits)
            attrs["gap_bits"] = int(first.gap_bits)
            attrs["entries"] = int(gaps.size)
            attrs["kept"] = kept
            del gaps
        else:
            inputs["mask"] = sparse.packed_mask(parts, size)
            attrs["entries"] = kept
        if isinstance(first, CodebookWeight):
            inputs["codes"] = bitpack.compress_parts([w.codes for w in _all(ws, CodebookWeight)], first.bits)
        else:
            inputs["values"] = np.concatenate([w.values for w in _all(ws, SparseWeight)])
    # the streams hold the data now; keep only what the graph needs to know of each weight
    return Group(op_type=first.op_type, weights=[w.slot() for w in ws], inputs=inputs, attrs=attrs)


def decode_group_reference(group: Group) -> np.ndarray:
    """What the group's decode node must output, via the operator's numpy reference."""
    from onnx import helper

    spec = group.spec
    to = helper.np_dtype_to_tensor_dtype(np.dtype(group.weights[0].dtype))
    return spec.reference(*(group.inputs[n] for n in spec.input_names), **group.attrs, to=to)


def split_group_output(group: Group, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Cut a group's decoded output into the weights, in their original layout."""
    out: dict[str, np.ndarray] = {}
    start = 0
    for w in group.weights:
        piece = flat[start : start + w.size].reshape(w.moved_shape)
        out[w.name] = np.moveaxis(piece, 0, w.axis) if piece.ndim else piece
        start += w.size
    return out
