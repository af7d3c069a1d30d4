"""format: runtime — affine codes (pure numpy) and the rewrite to onnxruntime-native operators,
checked against a numpy reference: the original model run with the decoded weights substituted."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_factory import zoo_inputs, zoo_model
from onnx import helper, numpy_helper

from onnxcompress.algorithms import affine
from onnxcompress.compressor import compress_model
from onnxcompress.config import CompressionConfig, WeightConfig
from onnxcompress.errors import ConfigError
from onnxcompress.inventory import build_inventory, iter_graphs, tensor_array
from onnxcompress.passes import runtime_native as rn


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray], *, optimize: bool = True) -> np.ndarray:
    so = ort.SessionOptions()
    if not optimize:  # no fusions: the DequantizeLinear output feeds the very same Conv kernel
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)[0]


def _substitute(model: onnx.ModelProto, decoded: dict[str, np.ndarray]) -> onnx.ModelProto:
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for _, g in iter_graphs(ref.graph):
        for t in g.initializer:
            if t.name in decoded:
                t.CopyFrom(numpy_helper.from_array(decoded[t.name], t.name))
        for n in g.node:
            if n.op_type == "Constant" and n.output[0] in decoded:
                n.attribute[0].t.CopyFrom(numpy_helper.from_array(decoded[n.output[0]], n.output[0]))
    return ref


def _rewrite(model: onnx.ModelProto, spec: rn.RuntimeSpec) -> tuple[onnx.ModelProto, dict, dict[str, str]]:
    inv = build_inventory(model)
    users = rn.consumers(model)
    rws, decoded = [], {}
    for info in inv.compressible():
        nodes = users.get(info.name, [])
        kind = rn.choose_kind(info, nodes, spec)
        rw, dec = rn.quantize(
            tensor_array(model, info.name), info, kind, spec, axis=rn.layout_axis(kind, info, nodes)
        )
        rws.append(rw)
        decoded[info.name] = dec
    ref = _substitute(model, decoded)
    out = rn.RuntimeNativePass(rws)(model).model
    onnx.checker.check_model(out, full_check=True)
    return out, ref, {rw.name: rw.kind for rw in rws}


# ------------------------------------------------------------------ affine codes (numpy)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_affine_roundtrip_and_error(bits: int, symmetric: bool) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 70)).astype(np.float32)
    w[3, 5] = 12.0  # an outlier: the clipping search keeps it from ruining every block
    c = affine.compress(w, bits=bits, block_size=16, symmetric=symmetric)
    dec = affine.decompress(c)
    assert dec.shape == w.shape and c.codes.max() < (1 << bits)
    q = c.codes.reshape(c.rows, c.blocks, 16).astype(np.float32)
    z = c.zero_point_array().astype(np.float32)[..., None]
    assert np.array_equal(((q - z) * c.scales[..., None]).reshape(24, -1)[:, :70], dec)
    minmax = affine.compress(w, bits=bits, block_size=16, symmetric=symmetric, clip_grid=(1.0,), refit=False)
    assert np.linalg.norm(dec - w) < np.linalg.norm(affine.decompress(minmax) - w)
    assert np.linalg.norm(dec - w) / np.linalg.norm(w) < {2: 0.6, 4: 0.15, 8: 0.01}[bits]


def test_affine_pruned_zeros_stay_zero() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    mask = rng.random(w.shape) > 0.7
    for sym in (True, False):
        dec = affine.decompress(affine.compress(w, bits=4, block_size=32, symmetric=sym, mask=mask))
        assert np.all(dec[~mask] == 0)


def test_affine_gptq_lowers_output_error() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((512, 64)) @ rng.standard_normal((64, 64))
    h = x.T @ x / len(x)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    plain = affine.decompress(affine.compress(w, bits=4, block_size=16))
    g = affine.decompress(affine.gptq(w, h, bits=4, block_size=16))

    def out_err(d: np.ndarray) -> float:
        return float(np.trace((w - d) @ h @ (w - d).T))

    assert out_err(g) < out_err(plain)


def test_affine_gptq_act_order_and_scale_refit_lower_the_output_error_further() -> None:
    """Act-order (columns by decreasing diag(H), block scales fixed beforehand) and the least-squares
    scale refit each lower the output error below plain GPTQ's on inputs of uneven energy, keep
    pruned weights exactly zero, and leave codes, zero points and layout alone (refit)."""
    rng = np.random.default_rng(5)
    cols = 96
    x = rng.standard_normal((2048, cols)) @ rng.standard_normal((cols, cols)) * 0.2
    x *= np.exp(rng.standard_normal(cols))  # some inputs carry far more energy than others
    h = x.T @ x / len(x)
    w = (rng.standard_normal((48, cols)) * 0.05).astype(np.float32)
    mask = rng.random(w.shape) > 0.3

    def out_err(c: affine.AffineCodes) -> float:
        e = w - affine.decompress(c)
        return float(np.einsum("ij,jk,ik->", e, h, e))

    kw = {"bits": 4, "block_size": 16, "mask": mask}
    base = affine.gptq(w, h, act_order=False, refit=False, **kw)
    ordered = affine.gptq(w, h, act_order=True, refit=False, **kw)
    both = affine.gptq(w, h, **kw)  # the defaults: act_order and refit
    assert out_err(ordered) < out_err(base)
    assert out_err(both) < out_err(ordered)
    for c in (ordered, both):
        assert np.all(affine.decompress(c)[~mask] == 0)
    refit = affine.refit_scales(base, w, h)
    assert np.array_equal(refit.codes, base.codes) and refit.zero_points is base.zero_points
    assert refit.scales.dtype == np.float32 and out_err(refit) < out_err(base)
    again = affine.refit_scales(refit, w, h)  # already optimal: no row gets worse
    assert out_err(again) <= out_err(refit) * (1 + 1e-6)


def test_affine_gptq_lazy_batches_give_the_same_codes(monkeypatch) -> None:
    """The lazy batch updates only reorder GPTQ's sums: the codes equal one batch over all columns."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((512, 80))
    h = x.T @ x / len(x)
    w = rng.standard_normal((24, 80)).astype(np.float32)
    monkeypatch.setattr(affine, "LAZY_BATCH", 16)
    batched = affine.gptq(w, h, bits=4, block_size=16)
    monkeypatch.setattr(affine, "LAZY_BATCH", 10**6)
    whole = affine.gptq(w, h, bits=4, block_size=16)
    assert np.array_equal(batched.codes, whole.codes)
    np.testing.assert_allclose(batched.scales, whole.scales, rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_rows_roundtrip(bits: int) -> None:
    codes = np.random.default_rng(3).integers(0, 1 << bits, (5, 37)).astype(np.uint8)
    assert np.array_equal(affine.unpack_rows(affine.pack_rows(codes, bits), bits, 37), codes)


# ------------------------------------------------------------------ the graph rewrite, run in onnxruntime


@pytest.mark.parametrize("opset", [11, 13, 17, 21])
@pytest.mark.parametrize("bits", [8, 4])
def test_zoo_runs_like_its_reference(opset: int, bits: int) -> None:
    """Conv (DequantizeLinear), Gemm transB=1, MatMul, Gather (with MatMul in the same model: the
    case onnxruntime's 4-bit quantizer wrote an invalid model for), Constant weights in If branches."""
    feed = zoo_inputs()
    exact, ref, kinds = _rewrite(
        zoo_model(opset), rn.RuntimeSpec(bits=bits, block_size=16, symmetric=False, accuracy_level=0)
    )
    assert kinds == {"conv.w": "fold", "fc1.w": "gemm", "fc2.w": "matmul", "emb": "gather",
                     "head.then.w": "matmul", "head.else.w": "matmul"}  # fmt: skip
    want = _run(ref, feed)
    np.testing.assert_allclose(_run(exact, feed), want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    fast, _, _ = _rewrite(zoo_model(opset), rn.RuntimeSpec(bits=bits, block_size=16))
    types = {n.op_type for n in fast.graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= types and "Gemm" not in types
    got = _run(fast, feed)  # accuracy_level 4: int8 activations inside MatMulNBits
    assert (
        np.abs(
            got
            - _run(
                _rewrite(zoo_model(opset), rn.RuntimeSpec(bits=bits, block_size=16, accuracy_level=0))[1],
                feed,
            )
        ).max()
        < 0.02 * np.abs(want).max()
    )


def _gemm_model(trans_a: int, trans_b: int, alpha: float, beta: float) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((48, 64) if trans_b else (64, 48)).astype(np.float32)
    c = rng.standard_normal(48).astype(np.float32)
    node = helper.make_node(
        "Gemm", ["a", "w", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta
    )
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", 1, [64, 3] if trans_a else [3, 64])],
        [helper.make_tensor_value_info("y", 1, [3, 48])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 0, 1.0, 1.0), (1, 1, 0.5, 2.0), (0, 1, 1.0, 0.0)])
def test_gemm_attributes(trans_a: int, trans_b: int, alpha: float, beta: float) -> None:
    """onnxruntime's MatMulNBits quantizer converts nothing on Gemm; we rewrite every form."""
    m = _gemm_model(trans_a, trans_b, alpha, beta)
    a = np.random.default_rng(5).standard_normal((64, 3) if trans_a else (3, 64)).astype(np.float32)
    out, ref, kinds = _rewrite(m, rn.RuntimeSpec(bits=4, block_size=16, accuracy_level=0))
    assert kinds == {"w": "gemm"}
    np.testing.assert_allclose(_run(out, {"a": a}), _run(ref, {"a": a}), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("opset,bits", [(11, 4), (17, 8), (21, 4), (21, 2)])
def test_conv_fold_is_bit_exact(opset: int, bits: int) -> None:
    """Conv weights decode with Cast/Sub/Mul, folded once at load: the conv output equals the
    reference bit for bit, with and without onnxruntime's optimizations."""
    feed = zoo_inputs()
    out, ref, _ = _rewrite(zoo_model(opset), rn.RuntimeSpec(bits=bits))
    for model in (out, ref):
        model.graph.output.insert(0, helper.make_tensor_value_info("c1", 1, None))
    for optimize in (False, True):
        assert np.array_equal(_run(out, feed, optimize=optimize), _run(ref, feed, optimize=optimize))
    assert "conv.w" in {n.output[0] for n in out.graph.node if n.op_type == "Mul"}
    assert [imp.version for imp in out.opset_import if imp.domain == ""] == [opset]  # never raised


# ------------------------------------------------------------------ plan / compressor / container


def test_compress_model_mixes_formats_and_container_roundtrip(tmp_path) -> None:
    from onnxcompress.container import read_model, write_container

    cfg = CompressionConfig(weight=WeightConfig(bits=8), op_types={"MatMul": {"format": "runtime"}, "Gemm": {"format": "runtime", "bits": 4}})  # fmt: skip
    res = compress_model(zoo_model(17), cfg)
    enc = {w.name: w.encoding for w in res.report.weights}
    assert enc["fc2.w"] == "runtime:matmul" and enc["fc1.w"] == "runtime:gemm"
    assert not enc["conv.w"].startswith("runtime") and not enc["emb"].startswith("runtime")
    feed = zoo_inputs()
    want = _run(_substitute(zoo_model(17), res.decoded), feed)
    got = _run(res.model, feed)
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    path = tmp_path / "m.onnxc"
    write_container(res.model, path)
    assert read_model(path).SerializeToString() == res.model.SerializeToString()


def test_config_rejects_unsupported_runtime_bits() -> None:
    with pytest.raises(ConfigError, match="bits 2, 4 or 8"):
        WeightConfig(format="runtime", bits=5)
    with pytest.raises(ConfigError, match="block_size"):
        WeightConfig(format="runtime", block_size=24)


def test_cli_format_runtime(tmp_path) -> None:
    from onnxcompress.cli import main

    src = tmp_path / "z.onnx"
    onnx.save(zoo_model(13), src)
    assert (
        main(["compress", str(src), "-o", str(tmp_path / "z.rt.onnx"), "--format", "runtime", "--quiet"]) == 0
    )
    out = onnx.load(tmp_path / "z.rt.onnx")
    assert "MatMulNBits" in {n.op_type for n in out.graph.node}


def test_container_entropy_codes_runtime_codes(tmp_path) -> None:
    """4-bit MatMulNBits/GatherBlockQuantized codes become entropy-coded code streams; unpack is exact."""
    from onnxcompress.container import read_model
    from onnxcompress.container.pack import pack_bytes, stream_specs

    res = compress_model(
        zoo_model(21), CompressionConfig(weight=WeightConfig(bits=4, format="runtime", block_size=16))
    )
    specs = stream_specs(res.model)
    coded = {n: s.bits for n, s in specs.items() if s.role == "codes"}
    assert any(n.endswith("fc2.w/B") for n in coded) and any(n.endswith("emb/data") for n in coded)
    assert set(coded.values()) == {4}
    data = res.model.SerializeToString()
    blob, _ = pack_bytes(data)
    (tmp_path / "m.onnxc").write_bytes(blob)
    assert read_model(tmp_path / "m.onnxc").SerializeToString() == data


def test_tied_weight_folds_and_matches() -> None:
    """A table read by Gather and by MatMul (tied embeddings) keeps one copy: the fold rewrite."""
    rng = np.random.default_rng(6)
    emb = (rng.standard_normal((64, 32)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
             helper.make_node("MatMul", ["e", "emb_t"], ["y"]),
             helper.make_node("Transpose", ["emb"], ["emb_t"], perm=[1, 0])]  # fmt: skip
    nodes = [nodes[0], nodes[2], nodes[1]]
    g = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2, 3])],
                          [helper.make_tensor_value_info("y", 1, [2, 3, 64])], [numpy_helper.from_array(emb, "emb")])  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    out, ref, kinds = _rewrite(m, rn.RuntimeSpec(bits=4))
    assert kinds == {"emb": "fold"}
    feed = {"ids": rng.integers(0, 64, (2, 3))}
    assert np.array_equal(_run(out, feed), _run(ref, feed))


# ------------------------------------------------------------------ activations int8 (MatMulInteger / ConvInteger)


def _dql(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """ONNX DynamicQuantizeLinear in numpy: uint8 codes, scale, zero point."""
    x = x.astype(np.float32)
    lo, hi = np.float32(min(0.0, float(x.min()))), np.float32(max(0.0, float(x.max())))
    scale = np.float32((hi - lo) / np.float32(255))
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.int32), scale, zp


def _int8_parts(model: onnx.ModelProto, weight: str) -> tuple[np.ndarray, np.ndarray]:
    """The int8 codes and per-channel scales the rewrite stored for ``weight``."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits[f"{rn.PREFIX}/{weight}/int8"], inits[f"{rn.PREFIX}/{weight}/scale"]


def _int8_rewrite(model: onnx.ModelProto, mask: dict[str, np.ndarray] | None = None, per_channel: bool = True):
    spec = rn.RuntimeSpec(bits=8, activations="int8", per_channel=per_channel)
    users = rn.consumers(model)
    rws, decoded = [], {}
    for info in build_inventory(model, min_elements=16).compressible():
        nodes = users.get(info.name, [])
        kind = rn.choose_kind(info, nodes, spec, 13)
        m = None if mask is None else mask.get(info.name)
        rw, dec = rn.quantize(
            tensor_array(model, info.name), info, kind, spec, axis=rn.layout_axis(kind, info, nodes), mask=m
        )
        rws.append(rw)
        decoded[info.name] = dec
    out = rn.RuntimeNativePass(rws)(model).model
    onnx.checker.check_model(out, full_check=True)
    return out, decoded, {rw.name: rw.kind for rw in rws}


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 0, 1.0, 1.0), (1, 1, 0.5, 2.0), (0, 1, 1.0, 0.0)])
def test_int8_gemm_matches_numpy_reference(
    trans_a: int, trans_b: int, alpha: float, beta: float, per_channel: bool
) -> None:
    """Gemm (onnxruntime's MatMulNBits quantizer converts nothing there) in every form: the output
    equals DynamicQuantizeLinear + integer matmul + scales computed in numpy, and ORT fuses it."""
    m = _gemm_model(trans_a, trans_b, alpha, beta)
    w = tensor_array(m, "w")
    c = tensor_array(m, "c")
    a = np.random.default_rng(7).standard_normal((64, 3) if trans_a else (3, 64)).astype(np.float32)
    pruned = np.abs(w) > 0.3  # pruning composes: pruned weights stay exactly zero
    out, decoded, kinds = _int8_rewrite(m, {"w": pruned}, per_channel)
    assert kinds == {"w": "gemm_int8"}
    q, s = _int8_parts(out, "w")
    assert q.dtype == np.int8 and q.shape == (64, 48) and s.shape == ((48,) if per_channel else ())
    wkn = w.T if trans_b else w
    dec = decoded["w"].T if trans_b else decoded["w"]
    assert np.array_equal(q.astype(np.float32) * s, dec)  # the weight decode is exact
    kept = pruned.T if trans_b else pruned
    assert np.all(dec[~kept] == 0)
    assert np.linalg.norm((dec - wkn)[kept]) < 0.01 * np.linalg.norm(wkn[kept])
    xq, xs, xz = _dql(a.T if trans_a else a)
    acc = (xq - xz) @ q.astype(np.int32)
    want = acc.astype(np.float32) * (xs * s)
    want = want * np.float32(alpha) + c * np.float32(beta) if (alpha, beta) != (1.0, 1.0) else want + c
    got = _run(out, {"a": a})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the unfused ONNX ops
    sess = ort.InferenceSession(out.SerializeToString(), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"a": a})[0], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _conv_np(x: np.ndarray, w: np.ndarray, group: int, pad: int) -> np.ndarray:
    """Integer NCHW convolution, stride 1 (numpy reference)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cout, cin_g, kh, kw = w.shape
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))  # N C H W kh kw
    outs = []
    for g in range(group):
        xg = win[:, g * cin_g : (g + 1) * cin_g]
        wg = w[g * (cout // group) : (g + 1) * (cout // group)]
        outs.append(np.einsum("nchwij,ocij->nohw", xg.astype(np.int64), wg.astype(np.int64)))
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("group", [1, 4])
def test_int8_conv_matches_numpy_reference(group: int) -> None:
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((8, 8 // group, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], group=group)
    g = helper.make_graph(
        [node], "c", [helper.make_tensor_value_info("x", 1, [2, 8, 6, 6])], [helper.make_tensor_value_info("y", 1, [2, 8, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    out, decoded, kinds = _int8_rewrite(m)
    assert kinds == {"w": "conv_int8"}
    q, s = _int8_parts(out, "w")
    assert q.shape == w.shape and s.shape == (1, 8, 1, 1)
    assert np.array_equal(q.astype(np.float32) * s.reshape(8, 1, 1, 1), decoded["w"])
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    xq, xs, xz = _dql(x)
    want = _conv_np(xq - xz, q, group, 1).astype(np.float32) * (xs * s) + b.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(_run(out, {"x": x}), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_int8_compress_model_zoo_and_cli(tmp_path, capsys) -> None:
    """The whole zoo through compress (Gemm, MatMul, Conv, MatMuls in If branches; the embedding
    keeps GatherBlockQuantized); the container codes the int8 weights and unpacks exactly; bad
    combinations are refused in one line without an output file."""
    from onnxcompress.cli import main
    from onnxcompress.container import read_model

    src = tmp_path / "z.onnx"
    onnx.save(zoo_model(17), src)
    out = tmp_path / "z.onnxc"
    assert main(["compress", str(src), "-o", str(out), "--format", "runtime", "--activations", "int8", "-q"]) == 0
    model = read_model(out)
    types = {n.op_type for _, g in iter_graphs(model.graph) for n in g.node}
    assert {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "GatherBlockQuantized"} <= types
    assert not {"Gemm", "Conv", "MatMulNBits"} & types
    from dataclasses import replace

    from onnxcompress.config import DEFAULT_PRESET, preset

    base = preset(DEFAULT_PRESET)  # what the CLI starts from (safe: shared codebooks where they pay)
    res = compress_model(
        zoo_model(17), replace(base, weight=replace(base.weight, format="runtime", activations="int8"))
    )
    assert res.model.SerializeToString() == model.SerializeToString()
    feed = zoo_inputs()
    want = _run(_substitute(zoo_model(17), res.decoded), feed)
    assert np.abs(_run(model, feed) - want).max() < 0.02 * np.abs(want).max()
    from onnxcompress.container.pack import stream_specs

    assert any(n.endswith("fc1.w/int8") for n in stream_specs(model))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = {n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node}
    assert "DynamicQuantizeMatMul" in fused and "MatMulInteger" not in fused  # what onnxruntime runs
    for argv in (["--activations", "int8"], ["--format", "runtime", "--bits", "4", "--activations", "int8"]):
        bad = tmp_path / "bad.onnx"
        assert main(["compress", str(src), "-o", str(bad), *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert "activations int8 needs format runtime and bits 8" in err and "\n" not in err, err
        assert not bad.exists()
    with pytest.raises(ConfigError, match="activations"):
        CompressionConfig(op_types={"Conv": {"activations": "int4"}})


@pytest.mark.parametrize(
    "plan",
    [{"bits": 4, "block_size": 16, "accuracy_level": 1}, {"bits": 8, "activations": "int8", "granularity": "channel"}],
)
def test_calibration_data_gives_gptq_affine_codes(plan) -> None:
    """With calibration data a runtime weight's codes get GPTQ error feedback against its inputs'
    Hessian (scales as without): lower output error on held-out inputs; pruned zeros stay zero."""
    from onnxcompress.calibration import calibrate

    rng = np.random.default_rng(9)
    mix = rng.standard_normal((64, 64)) * np.linspace(3, 0.1, 64)[:, None]
    w1 = (rng.standard_normal((64, 64)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((64, 32)) / 8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]  # fmt: skip
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, ["N", 64])],
                          [helper.make_tensor_value_info("y", 1, ["N", 32])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])  # fmt: skip
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": (rng.standard_normal((256, 64)) @ mix).astype(np.float32)}
    test = {"x": (rng.standard_normal((200, 64)) @ mix).astype(np.float32)}
    want = _run(model, test)
    cfg = CompressionConfig(weight=WeightConfig(format="runtime", sparsity=0.3, **plan), min_elements=16)


    def copy() -> onnx.ModelProto:  # compress_model works in place
        m = onnx.ModelProto()
        m.CopyFrom(model)
        return m

    plain = compress_model(copy(), cfg)
    cal = calibrate(copy(), data, cfg, sequential=False)
    assert set(cal.runtime) == {"w1", "w2"} and not len(cal.encoded)
    assert {w.method for w in cal.weights} == {"gptq (affine)"}
    out = compress_model(copy(), cfg, weight_hook=cal.hook)
    if plan.get("activations") != "int8":  # the calibrated MatMulNBits nodes keep the plan's level
        assert _levels(out.model) == {"w1": 1, "w2": 1}
    for name in ("w1", "w2"):
        assert np.mean(out.decoded[name] == 0) >= 0.29  # the pruned 30% (rounded down) stay exactly 0
        assert not np.array_equal(out.decoded[name], plain.decoded[name])

    def err(m: onnx.ModelProto) -> float:
        return float(np.linalg.norm(_run(m, test) - want) / np.linalg.norm(want))

    assert err(out.model) < 0.9 * err(plain.model)


# ------------------------------------------------------------------ accuracy_level (MatMulNBits)


def _levels(model: onnx.ModelProto) -> dict[str, int]:
    """The ``accuracy_level`` of every MatMulNBits node (any graph), keyed by its weight input."""
    out = {}
    for _, g in iter_graphs(model.graph):
        for n in g.node:
            if n.op_type == "MatMulNBits":
                (level,) = [a.i for a in n.attribute if a.name == "accuracy_level"]
                out[n.input[1].split("/")[-2]] = level
    return out


@pytest.mark.parametrize("bad", [-1, 5, 1.0, True, "4", None])
def test_accuracy_level_is_validated_at_every_plan_level(bad) -> None:
    with pytest.raises(ConfigError, match="accuracy_level must be an integer from 0 to 4"):
        WeightConfig(format="runtime", accuracy_level=bad)
    with pytest.raises(ConfigError, match=r"op_types\.MatMul: accuracy_level"):
        CompressionConfig(op_types={"MatMul": {"accuracy_level": bad}})
    with pytest.raises(ConfigError, match=r"names\.w: accuracy_level"):
        CompressionConfig(names={"w": {"accuracy_level": bad}})
    with pytest.raises(ConfigError, match="accuracy_level"):
        rn.RuntimeSpec(accuracy_level=bad)


def test_accuracy_level_reaches_matmulnbits_through_the_plan_hierarchy() -> None:
    """Global, op type and name levels (like block_size); format codebook weights ignore it, as
    they ignore block_size, so a global level can sit under an op type that picks the format."""
    assert set(_levels(compress_model(zoo_model(17), CompressionConfig(weight=WeightConfig(format="runtime"))).model).values()) == {4}  # fmt: skip
    cfg = CompressionConfig(
        weight=WeightConfig(bits=8, accuracy_level=1),
        op_types={"MatMul": {"format": "runtime"}, "Gemm": {"format": "runtime", "bits": 4, "accuracy_level": 4}},
        names={"head.then.w": {"accuracy_level": 0}},
    )  # fmt: skip
    res = compress_model(zoo_model(17), cfg)
    assert _levels(res.model) == {"fc1.w": 4, "fc2.w": 1, "head.then.w": 0, "head.else.w": 1}
    settings = {w.name: w.setting for w in res.report.weights}
    assert settings["fc2.w"].endswith("8b/block32/acc1") and settings["fc1.w"].endswith("4b/block32/acc4")
    assert not settings["conv.w"].startswith("runtime")  # codebook: the level is ignored
    # 8-bit weights below level 4 run onnxruntime's slow kernel: the report says so, once
    (note,) = [n for n in res.report.notes if "accuracy_level" in n]
    assert note.startswith("3 8-bit MatMulNBits weight(s)")


def test_accuracy_level_1_runs_our_decoded_weight_in_onnxruntime() -> None:
    """Level 1 computes in fp32 on exactly the weight our numpy decode gives (to float rounding);
    level 4 quantizes the activations to int8 inside the kernel and lands measurably further off."""
    rng = np.random.default_rng(10)
    w = (rng.standard_normal((256, 96)) * 0.05).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", 1, ["N", 256])],
                          [helper.make_tensor_value_info("y", 1, ["N", 96])], [numpy_helper.from_array(w, "w")])  # fmt: skip
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((8, 256)).astype(np.float32)
    errors = {}
    for level in (1, 4):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        res = compress_model(m, CompressionConfig(weight=WeightConfig(format="runtime", accuracy_level=level)))
        assert _levels(res.model) == {"w": level}
        want = x.astype(np.float64) @ res.decoded["w"].astype(np.float64)
        errors[level] = float(np.abs(_run(res.model, {"x": x}) - want).max() / np.abs(want).max())
    assert errors[1] < 1e-5, errors
    assert errors[4] > 10 * errors[1], errors


def test_accuracy_level_survives_plan_files_and_the_container(tmp_path) -> None:
    """A plan written by search (config_to_yaml) reads back to the same config; the metadata stamp
    rebuilds it; pack/unpack gives back the exact .onnx with the attribute."""
    from onnxcompress.cli import main
    from onnxcompress.config import from_dict, load_config, preset
    from onnxcompress.search.space import config_to_yaml

    base = preset("safe")
    cfg = CompressionConfig(
        weight=dataclasses.replace(base.weight, format="runtime", accuracy_level=1),
        names={"fc2.w": {"accuracy_level": 2}, "emb": None},
    )
    text = config_to_yaml(cfg)
    assert "accuracy_level: 1" in text and "accuracy_level: 2" in text
    (tmp_path / "plan.yaml").write_text(text)
    assert load_config(tmp_path / "plan.yaml", base) == cfg
    src = tmp_path / "z.onnx"
    onnx.save(zoo_model(17), src)
    out = tmp_path / "z.rt.onnx"
    assert main(["compress", str(src), "-o", str(out), "--config", str(tmp_path / "plan.yaml"), "-q"]) == 0
    model = onnx.load(out)
    assert _levels(model) == {"fc1.w": 1, "fc2.w": 2, "head.then.w": 1, "head.else.w": 1}
    (stamp,) = [json.loads(p.value) for p in model.metadata_props if p.key == "onnxcompress"]
    assert from_dict(stamp["config"]) == cfg
    assert main(["pack", str(out), "-o", str(tmp_path / "z.onnxc"), "-q"]) == 0
    assert main(["unpack", str(tmp_path / "z.onnxc"), "-o", str(tmp_path / "back.onnx"), "-q"]) == 0
    assert (tmp_path / "back.onnx").read_bytes() == out.read_bytes()
    # the flag wins over the plan's global level (not over its names entries)
    flag = tmp_path / "z.flag.onnx"
    assert main(["compress", str(src), "-o", str(flag), "--config", str(tmp_path / "plan.yaml"),
                 "--accuracy-level", "4", "-q"]) == 0  # fmt: skip
    assert _levels(onnx.load(flag)) == {"fc1.w": 4, "fc2.w": 2, "head.then.w": 4, "head.else.w": 4}


@pytest.mark.parametrize("value", ["7", "-1", "fast", "1.5"])
def test_cli_refuses_a_bad_accuracy_level_in_one_line(tmp_path, capsys, value) -> None:
    from onnxcompress.cli import main

    src = tmp_path / "z.onnx"
    onnx.save(zoo_model(13), src)
    out = tmp_path / "bad.onnx"
    assert main(["compress", str(src), "-o", str(out), "--format", "runtime", "--accuracy-level", value]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxcompress: error: accuracy_level must be an integer from 0 to 4") and "\n" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".onnxcompress-*"))
