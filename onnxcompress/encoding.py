"""From a weight's compressed form to the streams of one decode operator (pure numpy).

A weight is first encoded on its own (:func:`encode_codebook`, :func:`encode_pruned`), which
picks the smallest of the dense, relative-index and bitmask forms for that tensor. Weights that
share an operator, bit widths and output type are then concatenated into a :class:`Group` that
one decode node reconstructs: onnxruntime's load time grows with the number of decode calls, so
5,000 small weights must not become 5,000 decode nodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from onnxcompress.algorithms import bitpack, sparse
from onnxcompress.algorithms.codebook import CodebookTensor
from onnxcompress.algorithms.pruning import PrunedTensor
from onnxcompress.errors import EncodingError

MAX_GROUP_ELEMENTS = 1 << 26  # 256 MiB of fp32 per decode output: far below ORT's 1 GiB fold limit
_CHUNK = 1 << 20  # positions found per step in _nonzero_positions


def itemsize(dtype: np.dtype | str) -> int:
    return np.dtype(dtype).itemsize


@dataclass(frozen=True)
class EncodedWeight:
    """One weight in channel-major flat order, ready to join a group.

    ``kind`` is ``dense`` (a code for every position), ``relative`` or ``mask`` (codes or values
    only for the kept positions ``positions``). Codebook weights carry ``codebook``/``segments``/
    ``codes``; pruned-only weights carry raw ``values``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    axis: int
    size: int
    bits: int | None
    gap_bits: int | None
    positions: np.ndarray | None  # kept positions (relative/mask): int32, int64 from 2^31 elements
    codes: np.ndarray | None  # uint8: [size] for dense, [len(positions)] otherwise
    codebook: np.ndarray | None  # [S, 2**bits]
    segments: np.ndarray | None  # int64 [S+1], local
    values: np.ndarray | None  # [len(positions)] raw kept values (pruned-only)
    nbytes: int  # payload bytes of this weight in its chosen form

    @property
    def op_type(self) -> str:
        if self.codebook is not None:
            return {"dense": "CodebookDense", "relative": "CodebookRelative", "mask": "CodebookMask"}[
                self.kind
            ]
        return {"relative": "SparseRelative", "mask": "SparseMask"}[self.kind]

    @property
    def group_key(self) -> tuple:
        cb = None if self.codebook is None else self.codebook.dtype.str
        vals = None if self.values is None else self.values.dtype.str
        return (self.op_type, self.bits, self.gap_bits, np.dtype(self.dtype).str, cb, vals)

    @property
    def moved_shape(self) -> tuple[int, ...]:
        s = list(self.shape)
        return (s.pop(self.axis), *s) if s else ()


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
    nbytes, kind, g = min(options, key=lambda o: o[0])
    return kind, g, nbytes


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
    size = int(t.codes.size)
    side = t.codebook.nbytes + t.segments.size * 4
    if t.pruned:
        positions = _nonzero_positions(t.codes)
        kind, g, nbytes = _choose(
            size, positions, t.bits, encoding, gap_bits, bitpack.packed_size(size, t.bits)
        )
    else:
        positions = np.arange(0)
        kind, g, nbytes = "dense", None, bitpack.packed_size(size, t.bits)
    return EncodedWeight(
        name=name,
        kind=kind,
        shape=tuple(t.shape),
        dtype=np.dtype(t.dtype),
        axis=t.axis,
        size=size,
        bits=t.bits,
        gap_bits=g,
        positions=None if kind == "dense" else positions,
        codes=t.codes if kind == "dense" else t.codes[positions],
        codebook=t.codebook,
        segments=np.asarray(t.segments, dtype=np.int64),
        values=None,
        nbytes=nbytes + side,
    )


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
    original ``shape`` (channel axis ``axis``)."""
    size = int(np.prod(shape, dtype=np.int64))
    value_bits = 8 * np.dtype(p.values.dtype).itemsize
    kind, g, nbytes = _choose(
        size, p.positions, value_bits, "auto" if encoding == "dense" else encoding, gap_bits, None
    )
    return EncodedWeight(
        name=name,
        kind=kind,
        shape=tuple(shape),
        dtype=np.dtype(p.dtype),
        axis=axis,
        size=size,
        bits=None,
        gap_bits=g,
        positions=np.asarray(p.positions, dtype=position_dtype(size)),
        codes=None,
        codebook=None,
        segments=None,
        values=np.asarray(p.values),
        nbytes=nbytes,
    )


@dataclass
class Group:
    """Several weights decoded by one node: the node's input arrays and attributes."""

    op_type: str
    weights: list[EncodedWeight] = field(default_factory=list)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # input name -> array
    attrs: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(w.size for w in self.weights)


def build_groups(weights: list[EncodedWeight], max_elements: int = MAX_GROUP_ELEMENTS) -> list[Group]:
    """Partition weights by group key, chunk each partition, and assemble each chunk's streams.

    The groups' weights keep their metadata but not their per-element arrays (positions, codes,
    values): those are in the group's streams now, and a caller that drops ``weights`` afterwards
    frees them instead of holding the compressed model twice.
    """
    by_key: dict[tuple, list[EncodedWeight]] = {}
    # weights sharing trailing dims sit next to each other, so the graph can cut a whole run of
    # them with one Reshape + one Split instead of a Reshape per weight
    for w in sorted(weights, key=lambda w: (len(w.moved_shape), w.moved_shape[1:])):
        by_key.setdefault(w.group_key, []).append(w)
    groups: list[Group] = []
    for members in by_key.values():
        chunk: list[EncodedWeight] = []
        total = 0
        for w in members:
            if chunk and total + w.size > max_elements:
                groups.append(_assemble(chunk))
                chunk, total = [], 0
            chunk.append(w)
            total += w.size
        if chunk:
            groups.append(_assemble(chunk))
    return groups


def _assemble(ws: list[EncodedWeight]) -> Group:
    first = ws[0]
    group = Group(op_type=first.op_type, weights=ws)
    size = sum(w.size for w in ws)
    offsets = np.cumsum([0] + [w.size for w in ws])[:-1]
    attrs = {"size": int(size)}
    if first.codebook is not None:
        attrs["bits"] = int(first.bits)
        codebook = np.concatenate([w.codebook for w in ws], axis=0)
        segments = np.concatenate(
            [ws[0].segments[:1]] + [w.segments[1:] + off for w, off in zip(ws, offsets, strict=True)]
        )
        if segments[-1] >= 2**31:
            raise EncodingError("a decode group exceeds 2^31 elements")
        group.inputs["codebook"] = codebook
        group.inputs["segments"] = segments.astype(np.int32)
    if first.kind == "dense":
        group.inputs["codes"] = bitpack.compress_parts([w.codes for w in ws], first.bits)
    else:
        # the group's positions are each weight's plus its offset: the encoders take them per
        # weight, chunk by chunk, instead of one group-wide int64 array
        parts = [(w.positions, int(off)) for w, off in zip(ws, offsets, strict=True)]
        kept = sum(int(w.positions.size) for w in ws)
        if first.kind == "relative":
            gaps = sparse.relative_gaps(parts, first.gap_bits)
            group.inputs["gaps"] = bitpack.compress(gaps, first.gap_bits)
            attrs["gap_bits"] = int(first.gap_bits)
            attrs["entries"] = int(gaps.size)
            attrs["kept"] = kept
            del gaps
        else:
            group.inputs["mask"] = sparse.packed_mask(parts, size)
            attrs["entries"] = kept
        payload = [w.codes if w.codes is not None else w.values for w in ws]
        if first.codebook is not None:
            group.inputs["codes"] = bitpack.compress_parts(payload, first.bits)
        else:
            group.inputs["values"] = np.concatenate(payload)
    group.attrs = attrs
    # the streams hold the data now; keep only what the graph needs to know of each weight
    group.weights = [_metadata_only(w) for w in ws]
    return group


def _metadata_only(w: EncodedWeight) -> EncodedWeight:
    """``w`` without its per-element arrays (``values`` keeps its dtype, part of the group key)."""
    values = None if w.values is None else w.values[:0].copy()
    return dataclasses.replace(w, positions=None, codes=None, values=values)


def decode_group_reference(group: Group) -> np.ndarray:
    """What the group's decode node must output, via the numpy reference operators."""
    from onnx import helper

    from onnxcompress.ops.reference import REFERENCE

    to = helper.np_dtype_to_tensor_dtype(np.dtype(group.weights[0].dtype))
    return REFERENCE[group.op_type](**group.inputs, **group.attrs, to=to)


def split_group_output(group: Group, flat: np.ndarray) -> dict[str, np.ndarray]:
    """Cut a group's decoded output into the weights, in their original layout."""
    out: dict[str, np.ndarray] = {}
    start = 0
    for w in group.weights:
        piece = flat[start : start + w.size].reshape(w.moved_shape)
        out[w.name] = np.moveaxis(piece, 0, w.axis) if piece.ndim else piece
        start += w.size
    return out
