"""Each decode operator, run by onnxruntime and by onnx's ReferenceEvaluator, equals the numpy
reference semantics bit for bit, for every bit width, output dtype and supported opset; and the
operator table is the single source its users read (function bodies, container streams, host
decode)."""

from __future__ import annotations

import inspect
import itertools
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcompress.algorithms import bitpack, sparse
from onnxcompress.container import pack
from onnxcompress.ops import DECODE_OPS, DOMAIN, OPS, VERSION
from onnxcompress.ops.functions import build_function, functions_for
from onnxcompress.passes.host_decode import decode_on_host
from onnxcompress.sessions import make_session


def reference(op_type: str, inputs: dict[str, np.ndarray], attrs: dict[str, int]) -> np.ndarray:
    """The table's numpy reference, called as host decode calls it (inputs by position)."""
    spec = OPS[op_type]
    return spec.reference(*(inputs[n] for n in spec.input_names), **attrs)


def _model(op_type: str, inputs: dict[str, np.ndarray], attrs: dict[str, int], opset: int) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v, k) for k, v in inputs.items()]
    nodes = [helper.make_node(op_type, list(OPS[op_type].input_names), ["Y"], domain=DOMAIN, **attrs)]
    out = helper.make_tensor_value_info("Y", attrs["to"], [attrs["size"]])
    if attrs["to"] == TensorProto.BFLOAT16:  # onnxruntime's Python API cannot return bfloat16: widen exactly
        nodes[0].output[0] = "Y_bf16"
        nodes.append(helper.make_node("Cast", ["Y_bf16"], ["Y"], to=TensorProto.FLOAT))
        out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [attrs["size"]])
    graph = helper.make_graph(nodes, "g", [], [out], inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
        functions=functions_for([op_type], opset),
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _case(op_type: str, bits: int, gap_bits: int, size: int, segments: int, out_dtype, cb_dtype, rng):
    """Inputs and attributes of a random node of ``op_type`` (a new table row needs a case here)."""
    if op_type not in CASES:
        raise AssertionError(f"{op_type} is in the operator table but has no test case in _case")
    to = helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype))
    keep = np.sort(rng.choice(size, size=max(1, size // 7), replace=False))
    bounds = np.unique(
        np.concatenate([[0, size], rng.choice(np.arange(1, size), segments - 1, replace=False)])
    )
    cb = rng.standard_normal((bounds.size - 1, 2**bits)).astype(cb_dtype)
    cb[:, 0] = 0
    inputs: dict[str, np.ndarray] = {}
    attrs = {"size": size, "to": to}
    if op_type.startswith("Codebook"):
        inputs["codebook"] = cb
        inputs["segments"] = bounds.astype(np.int32)
        attrs["bits"] = bits
    if op_type == "CodebookScaled":  # one shared row, one float32 scale per segment
        inputs["codebook"] = cb[0]
        inputs["scales"] = rng.standard_normal(bounds.size - 1).astype(np.float32)
    if op_type in ("CodebookDense", "CodebookScaled"):
        inputs["codes"] = bitpack.compress(rng.integers(0, 2**bits, size), bits)
    else:
        if "Relative" in op_type:
            rel = sparse.encode_relative(keep, gap_bits)
            inputs["gaps"] = bitpack.compress(rel.gaps, gap_bits)
            attrs["gap_bits"] = gap_bits
            attrs["entries"] = rel.entries
            attrs["kept"] = keep.size
        else:
            inputs["mask"] = bitpack.compress(sparse.encode_mask(keep, size), 1)
            attrs["entries"] = keep.size
        if op_type.startswith("Codebook"):
            inputs["codes"] = bitpack.compress(rng.integers(1, 2**bits, keep.size), bits)
        else:
            inputs["values"] = rng.standard_normal(keep.size).astype(out_dtype)
    return {k: inputs[k] for k in OPS[op_type].input_names}, attrs


CASES = ("CodebookDense", "CodebookScaled", "CodebookRelative", "CodebookMask", "SparseRelative", "SparseMask")
ALL_OPS = list(DECODE_OPS)  # every operator the encoder may place: each must have a case


@pytest.mark.parametrize("op_type", ALL_OPS)
@pytest.mark.parametrize("bits", range(1, 9))
def test_onnxruntime_matches_reference_every_bit_width(op_type, bits):
    rng = np.random.default_rng(bits)
    if op_type.startswith("Sparse") and bits > 1:
        pytest.skip("raw-value ops have no bit width; gap widths covered by test_gap_widths")
    inputs, attrs = _case(op_type, bits, 4, 1003, 3, np.float32, np.float32, rng)
    model = _model(op_type, inputs, attrs, 17)
    got = make_session(model).run(None, {})[0]
    want = reference(op_type, inputs, attrs)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("op_type", ["CodebookRelative", "SparseRelative"])
@pytest.mark.parametrize("gap_bits", range(1, 9))
def test_gap_widths(op_type, gap_bits):
    rng = np.random.default_rng(gap_bits)
    inputs, attrs = _case(op_type, 5, gap_bits, 2000, 4, np.float32, np.float32, rng)
    got = make_session(_model(op_type, inputs, attrs, 13)).run(None, {})[0]
    np.testing.assert_array_equal(got, reference(op_type, inputs, attrs))


DTYPES = [
    (np.float32, np.float32),
    (np.float32, np.float16),
    (np.float16, np.float16),
    (ml_dtypes.bfloat16, ml_dtypes.bfloat16),
]


@pytest.mark.parametrize("out_dtype,cb_dtype", DTYPES, ids=["f32", "f32<-f16", "f16", "bf16"])
@pytest.mark.parametrize("opset", [12, 13, 18, 21])
def test_dtypes_and_opsets(out_dtype, cb_dtype, opset):
    if out_dtype is ml_dtypes.bfloat16 and opset < 13:
        pytest.skip("bfloat16 needs opset 13 (Reshape/Gather accept it from there): no such model exists")
    rng = np.random.default_rng(opset)
    for op_type in ALL_OPS:
        inputs, attrs = _case(op_type, 3, 3, 517, 5, out_dtype, cb_dtype, rng)
        model = _model(op_type, inputs, attrs, opset)
        got = make_session(model).run(None, {})[0]
        want = reference(op_type, inputs, attrs)
        if out_dtype is ml_dtypes.bfloat16:
            want = want.astype(np.float32)
        view = np.uint32 if want.dtype.itemsize == 4 else np.uint16
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.view(view), want.view(view))


@pytest.mark.parametrize("op_type", ALL_OPS)
def test_reference_evaluator_and_host_decode_match(op_type):
    """onnx's ReferenceEvaluator runs the function bodies, host decode runs the table's reference:
    both equal onnxruntime's folding bit for bit."""
    rng = np.random.default_rng(0)
    inputs, attrs = _case(op_type, 4, 3, 301, 2, np.float32, np.float32, rng)
    model = _model(op_type, inputs, attrs, 17)
    want = make_session(model).run(None, {})[0]
    evaluated = ReferenceEvaluator(model).run(None, {})[0]
    np.testing.assert_array_equal(evaluated.view(np.uint32), want.view(np.uint32))
    host = decode_on_host(model)
    assert host.decoded_nodes == 1 and not host.model.functions
    np.testing.assert_array_equal(host.arrays["Y"].view(np.uint32), want.view(np.uint32))


# --------------------------------------------------------------------------- the table is the one source


def test_every_table_row_is_complete():
    """Each operator has a reference whose signature is its schema (inputs positional, attributes
    keyword-only), a function body that checks, and helpers listed before the ops that call them."""
    for name, spec in OPS.items():
        assert spec.name == name
        params = inspect.signature(spec.reference).parameters.values()
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        keyword = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        assert tuple(positional) == spec.input_names, name
        assert tuple(keyword) == spec.attributes, name
        fn = build_function(name, 17)
        assert (fn.domain, fn.name) == (DOMAIN, name)
        assert tuple(fn.input) == spec.input_names and tuple(fn.attribute) == spec.attributes
        if not spec.helper:
            assert "to" in spec.attributes and "size" in spec.attributes, name
            assert (spec.kept is None) == (spec.positions is None), name
    fns = functions_for(DECODE_OPS, 17)
    assert [f.name for f in fns] == [n for n, s in OPS.items() if s.helper] + sorted(DECODE_OPS)
    model = helper.make_model(
        helper.make_graph([], "g", [], []),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, VERSION)],
        functions=fns,
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    with pytest.raises(ValueError, match="unknown decode operator"):
        build_function("Nope", 17)


@pytest.mark.parametrize("op_type", ALL_OPS)
def test_container_reads_stream_specs_from_the_table(op_type):
    """The container codes each bit-packed input with the width and count its table row declares,
    and those match the stream's real length; float inputs get their element size."""
    rng = np.random.default_rng(5)
    inputs, attrs = _case(op_type, 3, 4, 777, 3, np.float32, np.float16, rng)
    model = _model(op_type, inputs, attrs, 17)
    specs = pack.stream_specs(model)
    for inp in OPS[op_type].inputs:
        got = specs[inp.name]
        assert got.role == inp.name
        if inp.kind == "stream":
            bits, count = inp.stream_shape(attrs)
            assert (got.bits, got.count) == (bits, count)
            assert bitpack.packed_size(count, bits) == inputs[inp.name].size
        elif inp.kind == "float":
            assert got.elem == inputs[inp.name].dtype.itemsize
    data = model.SerializeToString()
    blob, stats = pack.pack_bytes(data)
    assert pack.expand(blob) == data
    assert {s.role for s in stats.streams} == set(OPS[op_type].input_names)


def test_domain_is_defined_once():
    root = Path(__file__).resolve().parents[1] / "onnxcompress"
    literal = '"ai.onnxcompress"'
    holders = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if literal in p.read_text()]
    assert holders == ["ops/spec.py"]


def test_single_segment_and_tiny_sizes():
    rng = np.random.default_rng(1)
    for size, bits in itertools.product([1, 7, 8, 9], [1, 5, 8]):
        inputs, attrs = _case("CodebookDense", bits, 3, size + 1, 1, np.float32, np.float32, rng)
        got = make_session(_model("CodebookDense", inputs, attrs, 17)).run(None, {})[0]
        np.testing.assert_array_equal(got, reference("CodebookDense", inputs, attrs))


def test_bitpack_round_trip_all_widths():
    rng = np.random.default_rng(2)
    for bits in range(1, 9):
        for n in (0, 1, 8, 13, 1000):
            codes = rng.integers(0, 2**bits, n).astype(np.uint8)
            packed = bitpack.compress(codes, bits)
            assert packed.size == bitpack.packed_size(n, bits)
            np.testing.assert_array_equal(bitpack.decompress(packed, bits, n), codes)


def test_relative_index_fillers():
    positions = np.array([0, 1, 40, 41, 300])
    rel = sparse.encode_relative(positions, 3)
    decoded, real = sparse.decode_relative(rel.gaps, 3)
    np.testing.assert_array_equal(decoded[real], positions)
    np.testing.assert_array_equal(real, rel.source >= 0)
    # skips 38 and 258 need 38 // 7 and 258 // 7 fillers of 7 positions each
    assert (~real).sum() == 38 // 7 + 258 // 7
    assert rel.entries == sparse.relative_entry_count(positions, 3)


def test_relative_index_every_width_round_trips():
    rng = np.random.default_rng(3)
    positions = np.sort(rng.choice(5000, 400, replace=False))
    for g in range(1, 9):
        rel = sparse.encode_relative(positions, g)
        decoded, real = sparse.decode_relative(rel.gaps, g)
        np.testing.assert_array_equal(decoded[real], positions)
        assert decoded.max() < 5000


@pytest.mark.parametrize("op_type", ["CodebookDense", "CodebookScaled", "CodebookRelative"])
def test_fixed_8bit_bodies_read_bytes_without_unpack(op_type):
    """A model whose every node of an operator has bits 8 stores a body that slices the stream's
    bytes instead of calling Unpack (no Unpack function at all when nothing else needs it), and
    onnxruntime still decodes exactly the reference."""
    rng = np.random.default_rng(8)
    inputs, attrs = _case(op_type, 8, 8, 1003, 3, np.float32, np.float32, rng)
    widths = {"bits": 8, "gap_bits": 8} if "Relative" in op_type else {"bits": 8}
    model = _model(op_type, inputs, attrs, 17)
    del model.functions[:]
    model.functions.extend(functions_for([op_type], 17, {op_type: widths}))
    onnx.checker.check_model(model, full_check=True)
    assert [f.name for f in model.functions] == [op_type]
    got = make_session(model).run(None, {})[0]
    np.testing.assert_array_equal(got.view(np.uint32), reference(op_type, inputs, attrs).view(np.uint32))
    evaluated = ReferenceEvaluator(model).run(None, {})[0]
    np.testing.assert_array_equal(evaluated.view(np.uint32), got.view(np.uint32))


@pytest.mark.parametrize("op_type", [op for op in CASES if op.startswith("Codebook")])
@pytest.mark.parametrize("bits", [3, 8])
def test_single_segment_bodies_skip_the_segment_lookup(op_type, bits):
    """A model whose every node of an operator has one segment stores a body without the
    per-position segment lookup (encoding.solo_ops); onnxruntime and onnx's evaluator still decode
    exactly the reference."""
    rng = np.random.default_rng(bits)
    inputs, attrs = _case(op_type, bits, 4, 1003, 1, np.float32, np.float32, rng)
    assert inputs["segments"].tolist() == [0, 1003]
    model = _model(op_type, inputs, attrs, 17)
    generic = next(f for f in model.functions if f.name == op_type)
    del model.functions[:]
    model.functions.extend(functions_for([op_type], 17, single_segment=[op_type]))
    onnx.checker.check_model(model, full_check=True)
    single = next(f for f in model.functions if f.name == op_type)
    assert len(single.node) < len(generic.node)
    scatters = sum(n.op_type == "ScatterElements" for n in single.node)
    assert scatters == sum(n.op_type == "ScatterElements" for n in generic.node) - 1
    got = make_session(model).run(None, {})[0]
    np.testing.assert_array_equal(got.view(np.uint32), reference(op_type, inputs, attrs).view(np.uint32))
    evaluated = ReferenceEvaluator(model).run(None, {})[0]
    np.testing.assert_array_equal(evaluated.view(np.uint32), got.view(np.uint32))
