"""End to end: the weights onnxruntime decodes from a compressed model equal the numpy
decompress bit for bit, for every method, bit width, granularity and sparse encoding, and the
model's outputs stay close to the original's."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import onnx
import pytest
from model_factory import zoo_inputs, zoo_model
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxcompress.compressor import compress_model
from onnxcompress.config import CompressionConfig, WeightConfig
from onnxcompress.inventory import build_inventory, iter_graphs
from onnxcompress.ops import DOMAIN
from onnxcompress.passes.host_decode import decode_on_host
from onnxcompress.sessions import make_session


def decoded_weights(model: onnx.ModelProto, expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run only the decode subgraph of ``model`` in onnxruntime and return the named weights."""
    names = list(expected)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    g = probe.graph
    keep, made = [], set()  # the decode nodes and the cut nodes that read their outputs
    for n in g.node:
        if n.domain == DOMAIN or (n.op_type in ("Split", "Reshape", "Transpose") and n.input[0] in made):
            keep.append(n)
            made.update(n.output)
    del g.node[:]
    g.node.extend(keep)
    del g.input[:]
    del g.output[:]
    del g.value_info[:]
    for name in names:
        g.output.append(
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(expected[name].dtype), None)
        )
    sess = make_session(probe)
    return dict(zip(names, sess.run(names, {}), strict=True))


def _bits(a: np.ndarray) -> np.ndarray:
    """The raw bit patterns, so -0.0 != 0.0 and NaN payloads count."""
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 2: np.uint16}[a.dtype.itemsize])


def _cfg(**kw) -> CompressionConfig:
    return CompressionConfig(weight=WeightConfig(**kw), min_elements=256)


def _check(model: onnx.ModelProto, cfg: CompressionConfig, tol: float | None = None):
    original = onnx.ModelProto()
    original.CopyFrom(model)
    result = compress_model(model, cfg)
    names = list(result.decoded)
    assert names, "nothing compressed"
    got = decoded_weights(result.model, result.decoded)
    for name in names:
        want = result.decoded[name]
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        np.testing.assert_array_equal(_bits(got[name]), _bits(want), err_msg=name)
    _check_host_decode(result)
    if tol is not None:
        x = zoo_inputs()
        ref = make_session(original).run(None, x)[0]
        out = make_session(result.model).run(None, x)[0]
        rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
        assert rel < tol, rel
    return result


def _check_host_decode(result) -> None:
    """onnxcompress.load's numpy decode yields the same weights bit for bit, leaves no decode op,
    and the session computes exactly what onnxruntime's own folding gives."""
    model = onnx.ModelProto()
    model.CopyFrom(result.model)
    host = decode_on_host(model)
    assert set(host.arrays) == set(result.decoded)
    for name, want in result.decoded.items():
        got = host.arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=name)
    assert not any(n.domain == DOMAIN for _, g in iter_graphs(host.model.graph) for n in g.node)
    assert not any(f.domain == DOMAIN for f in host.model.functions)
    x = zoo_inputs(dtype=helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type))
    folded = make_session(result.model).run(None, x)
    ours = make_session(host.model, external_initializers=host.arrays).run(None, x)
    for a, b in zip(folded, ours, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bits", range(1, 9))
def test_kmeans_every_bit_width(bits):
    result = _check(zoo_model(), _cfg(bits=bits), tol={8: 0.02, 6: 0.06}.get(bits))
    assert {w.bits for w in result.report.weights} == {bits}


@pytest.mark.parametrize(
    "method,granularity,encoding",
    list(
        itertools.product(["kmeans", "clipq"], ["tensor", "channel", "group"], ["dense", "relative", "mask"])
    ),
)
def test_methods_granularities_encodings(method, granularity, encoding):
    result = _check(
        zoo_model(),
        _cfg(method=method, bits=4, sparsity=0.7, granularity=granularity, group_size=4, encoding=encoding),
    )
    assert {w.encoding for w in result.report.weights} == {encoding}
    for w in result.report.weights:
        assert w.sparsity >= 0.69


@pytest.mark.parametrize("bits", [8, 4])
def test_shared_scaled_codebook(bits):
    """granularity shared: one CodebookScaled node decodes every weight from one shared table and
    a scale each, bit for bit as numpy decompresses it, with no per-tensor table stored."""
    result = _check(zoo_model(), _cfg(bits=bits, granularity="shared"), tol={8: 0.02}.get(bits))
    nodes = [n for n in result.model.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == ["CodebookScaled"]
    inits = {t.name: t for t in result.model.graph.initializer}
    assert list(inits[nodes[0].input[1]].dims) == [2**bits]
    assert list(inits[nodes[0].input[2]].dims) == [len(result.report.weights)]
    assert {w.setting for w in result.report.weights} == {f"kmeans {bits}b/shared"}


def test_codebook_share_mixes_own_and_shared_codebooks():
    """granularity tensor with a codebook_share: weights too small for their own table share one;
    8-bit codes are read as bytes, so no Unpack function is stored."""
    result = _check(zoo_model(), _cfg(bits=8, codebook_share=1 / 64), tol=0.02)
    settings = {w.setting for w in result.report.weights}
    assert settings == {"kmeans 8b/shared", "kmeans 8b/tensor"}, settings
    assert {n.op_type for n in result.model.graph.node if n.domain == DOMAIN} == {"CodebookDense", "CodebookScaled"}
    assert "Unpack" not in {f.name for f in result.model.functions}


def test_code_vectors_codes_biases_and_norm_scales_but_not_variances():
    """code_vectors: biases and normalization scales/shifts of 16+ elements join the shared
    codebook (decoded bit for bit like every weight); a BatchNormalization variance stays exact."""
    cfg = CompressionConfig(weight=WeightConfig(bits=8, codebook_share=1 / 64), min_elements=256, code_vectors=True)
    result = _check(zoo_model(), cfg, tol=0.02)
    coded = {w.name: w.setting for w in result.report.weights}
    for name in ("conv.b", "bn.scale", "bn.bias", "bn.mean", "fc1.b"):
        assert coded.get(name) == "kmeans 8b/shared", (name, coded.get(name))
    assert "bn.var" not in coded
    assert dict(result.report.skipped)["bn.var"].startswith("normalization parameter")
    pruned = CompressionConfig(weight=WeightConfig(bits=5, sparsity=0.5), code_vectors=True)
    skipped = dict(compress_model(zoo_model(), pruned).report.skipped)
    assert skipped["conv.b"].startswith("1-D tensor: code_vectors needs")


@pytest.mark.parametrize("encoding", ["relative", "mask"])
def test_prune_only_raw_values(encoding):
    result = _check(zoo_model(), _cfg(method="prune", sparsity=0.9, encoding=encoding))
    for w in result.report.weights:
        assert w.bits is None and w.sparsity >= 0.89


@pytest.mark.parametrize("pruning", ["global", "std", "nm"])
def test_pruning_modes(pruning):
    result = _check(zoo_model(), _cfg(bits=5, sparsity=0.8, pruning=pruning, quality=1.0, n=2, m=4))
    if pruning == "nm":
        # 2:4 everywhere; a partial trailing block (conv: 27 = 6 x 4 + 3) keeps ceil(2 * 3 / 4) = 2
        assert all(0.45 <= w.sparsity <= 0.5 for w in result.report.weights)


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 18, 21])
def test_opsets(opset):
    result = _check(zoo_model(opset), _cfg(bits=8), tol=0.02)
    model = result.model
    assert {i.domain for i in model.opset_import} >= {"", DOMAIN}
    assert max(i.version for i in model.opset_import if i.domain == "") == max(opset, 12)
    assert model.ir_version >= 8


@pytest.mark.parametrize("dtype,cb", [(np.float16, "float32"), (np.float32, "float16")])
def test_half_precision(dtype, cb):
    _check(zoo_model(17, dtype=dtype), _cfg(bits=6, sparsity=0.5, codebook_dtype=cb))


@pytest.mark.parametrize(
    "plan",
    [{"bits": 4}, {"method": "prune", "sparsity": 0.7, "encoding": "relative"},
     {"method": "prune", "sparsity": 0.7, "encoding": "mask"}],
    ids=["codebook", "pruned-relative", "pruned-mask"],
)  # fmt: skip
def test_bfloat16_weights(plan):
    """bf16 weights run in a stock onnxruntime session, pruned-only ones (SparseRelative /
    SparseMask) too: their bodies select value indices, never bf16 values (no bf16 Where in ORT)."""
    model = zoo_model(17)
    inv = build_inventory(model, min_elements=256)
    target = "fc1.w"
    # a bf16 weight feeding a Cast keeps the rest of the graph fp32
    for t in model.graph.initializer:
        if t.name == target:
            arr = onnx.numpy_helper.to_array(t).astype(ml_dtypes.bfloat16)
            t.CopyFrom(onnx.numpy_helper.from_array(arr, target + ".bf16"))
    model.graph.node.insert(0, helper.make_node("Cast", [target + ".bf16"], [target], to=TensorProto.FLOAT))
    assert any(w.name == "fc1.w" for w in inv.compressible())
    result = compress_model(model, _cfg(**plan))
    assert target + ".bf16" in result.decoded
    assert result.decoded[target + ".bf16"].dtype == ml_dtypes.bfloat16
    if "encoding" in plan:
        ops = {n.op_type for n in result.model.graph.node}
        assert {"relative": "SparseRelative", "mask": "SparseMask"}[plan["encoding"]] in ops, ops
    x = zoo_inputs()
    got = make_session(result.model).run(None, x)[0]
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name in result.decoded:
            t.CopyFrom(onnx.numpy_helper.from_array(result.decoded[t.name], t.name))
    np.testing.assert_array_equal(got, make_session(ref).run(None, x)[0])  # decoded bit for bit
    _check_host_decode(result)


def test_subgraph_constants_and_metadata_survive():
    model = zoo_model(17)
    result = _check(model, _cfg(bits=8), tol=0.02)
    assert {"head.then.w", "head.else.w"} <= set(result.decoded)
    out = result.model
    for path, g in iter_graphs(out.graph):
        if path:
            assert not any(n.op_type == "Constant" and n.output[0].startswith("head.") for n in g.node)
    assert {p.key for p in out.metadata_props} >= {"labels", "onnxcompress"}
    assert out.doc_string == "zoo model for tests" and out.producer_name == "model_factory"
    onnx.checker.check_model(out, full_check=True)


def test_reference_evaluator_runs_compressed_model():
    result = compress_model(zoo_model(17), _cfg(bits=5, sparsity=0.6, granularity="channel"))
    x = zoo_inputs()
    ort_out = make_session(result.model).run(None, x)[0]
    ref_out = ReferenceEvaluator(result.model).run(None, x)[0]
    np.testing.assert_allclose(ref_out, ort_out, rtol=1e-4, atol=1e-5)


def test_onnxruntime_folds_the_decode_away():
    """At BASIC optimization the decode subgraph is constant-folded: the optimized graph has no
    decode node left and no Split/Gather of our own."""
    import tempfile

    result = compress_model(zoo_model(17), _cfg(bits=5, sparsity=0.6))
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/opt.onnx"
        make_session(result.model, optimization_level="basic", optimized_model_path=path)
        optimized = onnx.load(path)
    leftover = [
        n.op_type
        for n in optimized.graph.node
        if n.op_type in ("ScatterElements", "CumSum", "Split", "NonZero")
    ]
    assert not leftover, leftover


def test_shared_tensor_compressed_once():
    model = zoo_model(17)
    # make fc2.w also feed a second MatMul
    model.graph.node.append(helper.make_node("MatMul", ["r2", "fc2.w"], ["extra"]))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 48]))
    result = compress_model(model, _cfg(bits=6))
    assert sum(1 for w in result.report.weights if w.name == "fc2.w") == 1
    make_session(result.model).run(None, zoo_inputs())


def test_inventory_roles_and_reasons():
    inv = {w.name: w for w in build_inventory(zoo_model(17), min_elements=256).weights}
    assert (inv["conv.w"].role, inv["conv.w"].axis) == ("conv", 0)
    assert (inv["fc1.w"].role, inv["fc1.w"].axis) == ("gemm", 0)
    assert (inv["fc2.w"].role, inv["fc2.w"].axis) == ("matmul", 1)
    assert (inv["emb"].role, inv["emb"].axis) == ("embedding", 0)
    assert inv["head.then.w"].source == "constant" and inv["head.then.w"].graph
    assert inv["conv.b"].skip_reason.startswith("bias")
    assert inv["bn.scale"].skip_reason.startswith("normalization")


def test_already_quantized_weights_are_left_alone():
    """A fake-quantized (QAT export) weight feeds QuantizeLinear: it must stay exact."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    plain = onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "plain")
    scale = onnx.numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zp = onnx.numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "scale", "zp"], ["wq"]),
        helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["wd"]),
        helper.make_node("MatMul", ["x", "wd"], ["h"]),
        helper.make_node("MatMul", ["h", "plain"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], [w, plain, scale, zp],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    inv = {i.name: i for i in build_inventory(model).weights}
    assert inv["w"].skip_reason.startswith("already quantized")
    assert inv["plain"].compressible
    result = compress_model(model, _cfg(bits=6))
    assert set(result.decoded) == {"plain"}


def _wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N, 192] -> MatMul[192, 4096] -> Relu -> MatMul[4096, 128]: 1.3M weight elements, enough for
    each weight to get a decode call of its own (encoding.solo_ops)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((192, 4096)) / 14).astype(np.float32)
    w2 = (rng.standard_normal((4096, 128)) / 64).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    g = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 192])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(
    "settings,solo",
    [
        ({"bits": 8}, True),
        ({"bits": 5, "sparsity": 0.6, "encoding": "mask"}, True),
        ({"bits": 4, "sparsity": 0.7, "encoding": "relative"}, True),
        ({"bits": 8, "granularity": "channel"}, False),
    ],
    ids=["dense8", "mask5", "relative4", "per-channel"],
)
def test_large_models_decode_each_weight_alone_without_segment_lookup(settings, solo):
    """A model of a million elements or more whose weights each have one codebook gets one decode
    call per weight and a body with no per-position segment lookup (the int32 arrays onnxruntime
    would hold while folding); per-channel codebooks keep the shared call. Either way onnxruntime's
    folding, host decode and the algorithms' decompress agree bit for bit."""
    result = compress_model(_wide_mlp(), _cfg(**settings))
    decode_nodes = [n for n in result.model.graph.node if n.domain == DOMAIN]
    assert len(decode_nodes) == (2 if solo else 1)
    body = next(f for f in result.model.functions if f.name == decode_nodes[0].op_type)
    segment_ops = {"CumSum", "ScatterElements"} if settings.get("encoding") != "relative" else {"Add"}
    has_lookup = any(n.op_type in segment_ops for n in body.node)
    if settings.get("encoding") is None:
        assert has_lookup is not solo
    got = decoded_weights(result.model, result.decoded)
    copy = onnx.ModelProto()
    copy.CopyFrom(result.model)
    host = decode_on_host(copy)  # takes the model apart: a copy
    for name, want in result.decoded.items():
        np.testing.assert_array_equal(_bits(got[name]), _bits(want), err_msg=name)
        np.testing.assert_array_equal(_bits(host.arrays[name]), _bits(want), err_msg=name)
    x = {"x": np.random.default_rng(2).standard_normal((3, 192)).astype(np.float32)}
    folded = make_session(result.model).run(None, x)[0]
    ours = make_session(host.model, external_initializers=host.arrays).run(None, x)[0]
    np.testing.assert_array_equal(folded, ours)
