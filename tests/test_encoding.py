"""One encoding type per decode operator: each encodes, groups with its own kind and decodes back
(through the operator table's numpy reference) to exactly the array its algorithm decompresses to."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from onnxcompress.algorithms import codebook, pruning, scaled_codebook
from onnxcompress.encoding import (
    CodebookDense,
    CodebookMask,
    CodebookRelative,
    CodebookScaled,
    EncodedWeight,
    SparseMask,
    SparseRelative,
    WeightSlot,
    build_groups,
    decode_group_reference,
    encode_codebook,
    encode_pruned,
    split_group_output,
)
from onnxcompress.ops import DECODE_OPS


def test_one_encoding_type_per_decode_operator():
    kinds = typing.get_args(EncodedWeight)
    assert sorted(k.op_type for k in kinds) == sorted(DECODE_OPS)
    assert {(k.op_type, k.kind) for k in kinds} == {
        ("CodebookDense", "dense"),
        ("CodebookScaled", "dense"),
        ("CodebookRelative", "relative"),
        ("CodebookMask", "mask"),
        ("SparseRelative", "relative"),
        ("SparseMask", "mask"),
    }


def _weights(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(s).astype(np.float32) for s in ((40, 30), (40, 30), (16, 3, 3, 3), (50,))]


def _encode(kind: type, w: np.ndarray, name: str, axis: int) -> tuple[EncodedWeight, np.ndarray]:
    keep = pruning.magnitude_mask(w, 0.7)
    encoding = kind.kind
    if kind is CodebookScaled:  # one table fitted on the test's weights (the first three of _weights)
        rng = np.random.default_rng(7)
        pool = [scaled_codebook.normalised_sample(x) for x in _weights(rng)[:3]]
        ct = scaled_codebook.quantize_scaled(w, scaled_codebook.fit_shared(pool, bits=4), bits=4)
        return encode_codebook(name, ct, encoding=encoding), codebook.decompress(ct)
    if kind.op_type.startswith("Codebook"):
        ct = codebook.quantize(
            w, bits=4, mask=None if kind is CodebookDense else keep, granularity="channel", axis=axis
        )
        return encode_codebook(name, ct, encoding=encoding, gap_bits=3), codebook.decompress(ct)
    moved = np.ascontiguousarray(np.moveaxis(w, axis, 0))
    p = pruning.compress(moved, np.moveaxis(keep, axis, 0))
    enc = encode_pruned(name, p, axis, shape=tuple(w.shape), encoding=encoding, gap_bits=3)
    return enc, np.moveaxis(pruning.decompress(p), 0, axis)


@pytest.mark.parametrize("kind", typing.get_args(EncodedWeight), ids=lambda k: k.op_type)
def test_each_kind_groups_and_decodes_exactly(kind):
    rng = np.random.default_rng(7)
    encoded, want = [], {}
    for i, w in enumerate(_weights(rng)):
        axis = 1 if w.ndim == 2 and i == 1 else 0
        enc, dec = _encode(kind, w, f"w{i}", axis)
        assert type(enc) is kind and enc.nbytes > 0
        encoded.append(enc)
        want[enc.name] = dec
    groups = build_groups(encoded, max_elements=2500)
    assert len(groups) > 1 and {g.op_type for g in groups} == {kind.op_type}
    got: dict[str, np.ndarray] = {}
    for g in groups:
        assert set(g.inputs) == set(g.spec.input_names)
        assert all(type(w) is WeightSlot for w in g.weights)  # the arrays live in the streams only
        got.update(split_group_output(g, decode_group_reference(g)))
    assert set(got) == set(want)
    for name, dec in want.items():
        assert got[name].dtype == dec.dtype
        np.testing.assert_array_equal(got[name], dec)


def test_kinds_never_share_a_group():
    rng = np.random.default_rng(8)
    w = _weights(rng)[0]
    encoded = [
        _encode(k, w, f"{k.op_type}", 0)[0]
        for k in (CodebookRelative, CodebookMask, SparseRelative, SparseMask)
    ]
    groups = build_groups(encoded)
    assert sorted(g.op_type for g in groups) == sorted(e.op_type for e in encoded)


def test_large_models_with_one_codebook_per_weight_decode_each_weight_alone():
    """solo_ops: a call per weight only where it pays (a million elements or more, at most
    SOLO_MAX_WEIGHTS weights, every weight of the operator with one segment); build_groups follows it."""
    import dataclasses

    from onnxcompress.encoding import SOLO_MAX_WEIGHTS, SOLO_MIN_ELEMENTS, solo_ops

    rng = np.random.default_rng(9)
    w = _weights(rng)[0]
    per_tensor = encode_codebook("t", codebook.quantize(w, bits=4, granularity="tensor"), encoding="dense")
    per_channel = encode_codebook("c", codebook.quantize(w, bits=4, granularity="channel"), encoding="dense")
    assert per_tensor.segments.size == 2 and per_channel.segments.size > 2
    big = SOLO_MIN_ELEMENTS // 2
    two = [dataclasses.replace(per_tensor, name=f"t{i}", size=big) for i in range(2)]
    assert solo_ops(two) == {"CodebookDense"}
    assert solo_ops(two[:1]) == set()  # half a million elements: the shared call is cheaper
    assert solo_ops([*two, dataclasses.replace(per_channel, size=big)]) == set()
    many = [dataclasses.replace(per_tensor, name=f"m{i}", size=big) for i in range(SOLO_MAX_WEIGHTS + 1)]
    assert solo_ops(many) == set()
    small = [dataclasses.replace(per_tensor, name=f"s{i}") for i in range(3)]
    assert len(build_groups(small)) == 1
    groups = build_groups(small, solo={"CodebookDense"})
    assert [g.weights[0].name for g in groups] == ["s0", "s1", "s2"]
    assert all(g.inputs["segments"].tolist() == [0, w.size] for g in groups)
