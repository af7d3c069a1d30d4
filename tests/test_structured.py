"""Structured pruning: each pruned model is run in onnxruntime against the same network built
directly with the smaller shapes and the kept weights (tests/structured_models.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from structured_models import (
    bert_layer,
    bert_params,
    concat_net,
    concat_params,
    decoder_net,
    decoder_params,
    flatten_net,
    flatten_params,
    mlp_net,
    mlp_params,
    mobile_net,
    mobile_params,
    refusal_net,
    residual_cnn,
    residual_params,
)

from onnxcompress.calibration.capture import get_tensor
from onnxcompress.errors import ConfigError
from onnxcompress.sessions import make_session
from onnxcompress.structured import StructuredConfig, analyze, count_flops, prune_model, structured_from_dict


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = make_session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def kept(p: dict, pruned: onnx.ModelProto, bias: str) -> np.ndarray:
    """Which original channels survive, found from the (distinct) bias values."""
    after = get_tensor(pruned, bias).reshape(-1)
    idx = np.array([int(np.flatnonzero(p[bias] == v)[0]) for v in after])
    assert np.all(np.diff(idx) > 0)
    return idx


def check_same(pruned: onnx.ModelProto, reference: onnx.ModelProto, x: np.ndarray) -> None:
    onnx.checker.check_model(pruned, full_check=True)
    np.testing.assert_allclose(run(pruned, x), run(reference, x), rtol=1e-4, atol=1e-5)


def x_of(shape, seed=3):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_residual_stages_prune_every_branch_alike():
    p = residual_params()
    m = residual_cnn(p)
    pm, rep = prune_model(m, StructuredConfig(ratio=0.5))
    k1, k2, k3 = kept(p, pm, "stem.b"), kept(p, pm, "a.b"), kept(p, pm, "c.b")
    assert (len(k1), len(k2), len(k3)) == (4, 3, 6)
    np.testing.assert_array_equal(kept(p, pm, "b.b"), k1)  # both branches of the identity Add
    np.testing.assert_array_equal(kept(p, pm, "p.b"), k3)  # conv branch and 1x1 projection
    q = dict(p)
    for name in ("stem.w", "stem.b", "bn.s", "bn.bias", "bn.m", "bn.v", "b.b"):
        q[name] = p[name][k1]
    q["a.w"], q["a.b"] = p["a.w"][k2][:, k1], p["a.b"][k2]
    q["b.w"] = p["b.w"][k1][:, k2]
    q["c.w"], q["c.b"], q["p.w"], q["p.b"] = (
        p["c.w"][k3][:, k1],
        p["c.b"][k3],
        p["p.w"][k3][:, k1],
        p["p.b"][k3],
    )
    q["fc.w"] = p["fc.w"][:, k3]
    check_same(pm, residual_cnn(q), x_of((2, 3, 16, 16)))
    assert rep.flops_after < rep.flops_before / 2.5
    assert [g.refused is not None for g in rep.groups] == [False, False, False, True]


def test_concat_slice_and_split_offsets():
    p = concat_params()
    m = concat_net(p)
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5))
    ka, kb, kc, ke = (kept(p, pm, n) for n in ("A.b", "B.b", "C.b", "E.b"))
    np.testing.assert_array_equal(kept(p, pm, "D.b"), kc)
    cat = np.concatenate([ka, 6 + kb])
    in_slice = cat[(cat >= 2) & (cat < 8)] - 2
    bounds = (int((cat < 2).sum()), int((cat < 8).sum()))
    e1, e2 = ke[ke < 4], ke[ke >= 4] - 4
    q = dict(p)
    q["A.w"], q["A.b"], q["B.w"], q["B.b"] = p["A.w"][ka], p["A.b"][ka], p["B.w"][kb], p["B.b"][kb]
    q["C.w"], q["C.b"] = p["C.w"][kc][:, cat], p["C.b"][kc]
    q["D.w"], q["D.b"] = p["D.w"][kc][:, in_slice], p["D.b"][kc]
    q["E.w"], q["E.b"] = p["E.w"][ke][:, kc], p["E.b"][ke]
    q["G.w"], q["H.w"] = p["G.w"][:, e1], p["H.w"][:, e2]
    ref = concat_net(q, slice_bounds=bounds, split=[len(e1), len(e2)])
    check_same(pm, ref, x_of((2, 3, 8, 8)))


def test_depthwise_follows_its_input_and_grouped_conv_keeps_lanes():
    p = mobile_params()
    m = mobile_net(p)
    a = analyze(m)
    assert [len(g.classes) for g in a.groups][:3] == [8, 3, 4]  # proj: 6 channels in 2 groups -> 3 lanes
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5))
    ke, kp, kg = kept(p, pm, "exp.b"), kept(p, pm, "proj.b"), kept(p, pm, "grp.b")
    lanes_p = kp[kp < 3]
    np.testing.assert_array_equal(kp, np.concatenate([lanes_p, lanes_p + 3]))
    lanes_g = kg[kg < 4]
    np.testing.assert_array_equal(kg, np.concatenate([lanes_g, lanes_g + 4]))
    q = dict(p)
    q["exp.w"], q["exp.b"], q["dw.w"], q["dw.b"] = (
        p["exp.w"][ke],
        p["exp.b"][ke],
        p["dw.w"][ke],
        p["dw.b"][ke],
    )
    q["proj.w"], q["proj.b"] = p["proj.w"][kp][:, ke], p["proj.b"][kp]
    q["grp.w"], q["grp.b"] = p["grp.w"][kg][:, lanes_p], p["grp.b"][kg]
    q["fc.w"] = p["fc.w"][kg]
    check_same(pm, mobile_net(q, groups=2), x_of((2, 4, 8, 8)))
    dw = next(n for n in pm.graph.node if n.name == "dw")
    assert next(att.i for att in dw.attribute if att.name == "group") == len(ke)


@pytest.mark.parametrize("how", ["flatten", "reshape"])
def test_flatten_or_reshape_into_gemm_blocks(how):
    p = flatten_params()
    m = flatten_net(p, how)
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5))
    kc, kh = kept(p, pm, "conv.b"), kept(p, pm, "fc1.b")
    feats = (kc[:, None] * 16 + np.arange(16)).ravel()
    q = dict(p)
    q["conv.w"], q["conv.b"] = p["conv.w"][kc], p["conv.b"][kc]
    q["fc1.w"], q["fc1.b"], q["fc2.w"] = p["fc1.w"][kh][:, feats], p["fc1.b"][kh], p["fc2.w"][kh]
    check_same(pm, flatten_net(q, how), x_of((2, 1, 6, 6)))


def test_transformer_mlp_neurons_and_refused_residual():
    p = mlp_params()
    m = mlp_net(p)
    pm, rep = prune_model(m, StructuredConfig(ratio=0.5))
    k = kept(p, pm, "b1")
    assert len(k) == 8
    q = dict(p)
    q["w1"], q["b1"], q["w2"] = p["w1"][:, k], p["b1"][k], p["w2"][k]
    check_same(pm, mlp_net(q), x_of((2, 5, 8)))
    # fc2's outputs are added to the graph input: that group is refused, its width unchanged
    assert get_tensor(pm, "w2").shape[1] == 8
    assert "spans the channel axis" in (rep.groups[1].refused or "")


def test_conv_transpose_resize_pad():
    p = decoder_params()
    pm, _ = prune_model(decoder_net(p), StructuredConfig(ratio=0.5))
    ke, ku = kept(p, pm, "enc.b"), kept(p, pm, "up.b")
    q = dict(p)
    q["enc.w"], q["enc.b"] = p["enc.w"][ke], p["enc.b"][ke]
    q["up.w"], q["up.b"], q["out.w"] = p["up.w"][ke][:, ku], p["up.b"][ku], p["out.w"][:, ku]
    check_same(pm, decoder_net(q), x_of((2, 3, 8, 8)))


def test_refusals_leave_groups_untouched_with_reasons():
    m = refusal_net()
    a = analyze(m)
    reasons = {g.name: g.refused for g in a.groups}
    assert "computed at run time" in reasons["k1"]
    assert "graph output" in reasons["k2"]
    assert "MatMul" in reasons["q"] and "MatMul" in reasons["k"]
    assert all(g.refused for g in a.groups)
    pm, rep = prune_model(m, StructuredConfig(ratio=0.5))
    for t in m.graph.initializer:
        np.testing.assert_array_equal(get_tensor(pm, t.name), get_tensor(m, t.name))
    assert all(g.channels_after == g.channels_before for g in rep.groups)


def test_refit_reduces_the_error_of_the_next_layers():
    p = residual_params(seed=1, c1=16, c2=16, c3=16)
    m = residual_cnn(p)
    calib = {"x": x_of((64, 3, 16, 16), seed=5)}
    x = x_of((32, 3, 16, 16), seed=6)
    y = run(m, x)
    errors = {}
    for mode in ("none", "bias", "lstsq"):
        pm, rep = prune_model(m, StructuredConfig(ratio=0.5, refit=mode, criterion="l1"), calib)
        errors[mode] = float(np.linalg.norm(run(pm, x) - y) / np.linalg.norm(y))
        for row in rep.refit:
            assert row.error_after <= row.error_before + 1e-9
    assert errors["lstsq"] < errors["bias"] < errors["none"]
    assert errors["lstsq"] < 0.5 * errors["none"]


def test_flops_counted_from_the_graph():
    fc = count_flops(flatten_net(flatten_params()))
    # conv 2*6*16*9, relu 96, fc1 2*5*96, relu 5, fc2 2*3*5
    assert fc.total == 1728 + 96 + 960 + 5 + 30


def test_flop_target_and_plan_hierarchy():
    m = residual_cnn(residual_params(c1=16, c2=16, c3=32))
    before = count_flops(m).total
    pm, rep = prune_model(m, StructuredConfig(target_flops=0.5))
    assert rep.flops_after <= 0.5 * before and rep.flops_after > 0.25 * before
    cfg = structured_from_dict({"ratio": 0.5, "names": {"a": 0}, "op_types": {"Gemm": 0.25}})
    pm, rep = prune_model(m, cfg)
    by = {g.name: g for g in rep.groups}
    assert by["a"].channels_after == 16 and by["stem"].channels_after == 8


def test_structured_config_validation():
    assert structured_from_dict(0.3).ratio == 0.3
    for bad in (
        {"ratio": 1.5},
        {"criterion": "magic"},
        {"refit": "x"},
        {"nope": 1},
        {"target_flops": 0},
        "x",
    ):
        with pytest.raises(ConfigError):
            structured_from_dict(bad)  # type: ignore[arg-type]


def test_composes_with_the_codebook_stage():
    from onnxcompress.compressor import compress_model
    from onnxcompress.config import CompressionConfig, WeightConfig

    m = residual_cnn(residual_params(c1=16, c2=16, c3=32))
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5))
    x = x_of((2, 3, 16, 16))
    y = run(pm, x)
    pruned_size = pm.ByteSize()
    res = compress_model(pm, CompressionConfig(weight=WeightConfig(bits=8), min_elements=16))  # in place
    assert res.model.ByteSize() < pruned_size < m.ByteSize()
    np.testing.assert_allclose(run(res.model, x), y, rtol=0.05, atol=0.05)


def test_no_tensor_loses_every_channel():
    # a 2-way Split of 2 channels: ratio 0.5 on its source must not empty a piece
    p = concat_params(ce=2)
    p["G.w"], p["H.w"] = p["G.w"][:, :1], p["H.w"][:, :1]
    m = concat_net(p, split=[1, 1])
    pm, _ = prune_model(m, StructuredConfig(ratio=0.9))
    assert get_tensor(pm, "E.w").shape[0] == 2
    onnx.checker.check_model(pm, full_check=True)
    run(pm, x_of((1, 3, 8, 8)))


def test_overridable_or_shared_constants_refuse_their_groups():
    p = flatten_params()
    m = flatten_net(p)
    w = m.graph.initializer[[t.name for t in m.graph.initializer].index("fc1.w")]
    m.graph.input.append(onnx.helper.make_tensor_value_info("fc1.w", onnx.TensorProto.FLOAT, list(w.dims)))
    a = analyze(m)
    assert all("shared" in (g.refused or "") or "graph output" in (g.refused or "") for g in a.groups)
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5))
    assert get_tensor(pm, "fc1.w").shape == p["fc1.w"].shape
    # the same bias feeding two layers: the slicing cannot suit both
    m = mlp_net(mlp_params())
    m.graph.node.append(onnx.helper.make_node("Add", ["b1", "b1"], ["b1x2"]))
    m.graph.output.append(onnx.helper.make_tensor_value_info("b1x2", onnx.TensorProto.FLOAT, [16]))
    assert "shared" in (analyze(m).groups[0].refused or "")


def test_exported_bert_layer_prunes_the_mlp_and_keeps_heads_without_a_head_ratio():
    p = bert_params()
    m = bert_layer(p)
    groups = {g.name: g for g in analyze(m).groups}
    assert groups["fc1"].refused is None  # MatMul -> bias Add -> Erf GELU -> MatMul
    # heads (Reshape shapes computed from Shape at run time): one head group of q, k, v read by o
    # (tests/test_structured_heads.py); a channel ratio alone leaves it alone
    assert groups["q"].kind == "heads" and [s.name for s in groups["q"].sources] == ["q", "k", "v"]
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5))
    assert get_tensor(pm, "wq").shape == p["wq"].shape
    k = kept(p, pm, "b1")
    assert len(k) == 8
    q = dict(p)
    q["w1"], q["b1"], q["w2"] = p["w1"][:, k], p["b1"][k], p["w2"][k]
    check_same(pm, bert_layer(q), x_of((2, 5, 8)))
    # FLOPs through the run-time Reshape chain (data propagation), at a named sequence length
    f1, f5 = count_flops(m).by_op["MatMul"], count_flops(m, {"S": 5}).by_op["MatMul"]
    d, f, s = 8, 16, 5
    assert f5 == s * (4 * 2 * d * d + 2 * 2 * d * f) + 2 * (2 * s * s * d)
    assert f1 == 4 * 2 * d * d + 2 * 2 * d * f + 2 * 2 * d


def test_calibration_on_unpadded_sequences_and_the_obs_criterion():
    p = bert_params(seed=2, f=16)
    # neurons 8..15 duplicate neurons 0..7: a refit recovers any one of each pair exactly
    p["w1"][:, 8:], p["b1"][8:] = p["w1"][:, :8], p["b1"][:8]
    m = bert_layer(p)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((4, s, 8)).astype(np.float32)} for s in (3, 6, 9, 12)]
    x = x_of((3, 7, 8), seed=9)
    y = run(m, x)
    err = {}
    for crit in ("activation", "obs"):
        config = StructuredConfig(ratio=0.5, criterion=crit, names={"q": 0, "k": 0, "v": 0})
        pm, rep = prune_model(m, config, batches)  # sequences of 3, 6, 9, 12 tokens, no padding
        assert get_tensor(pm, "w1").shape == (8, 8)
        err[crit] = float(np.linalg.norm(run(pm, x) - y) / np.linalg.norm(y))
    assert err["obs"] < 5e-3  # keeps one of each pair
    assert err["activation"] > 10 * err["obs"]  # scores pairs alike: drops both of some


def test_latency_change_measured_per_model_and_per_group():
    m = residual_cnn(residual_params(c1=16, c2=16, c3=32))
    _, rep = prune_model(m, StructuredConfig(ratio=0.5, latency="groups"))
    assert rep.latency_before_ms and rep.latency_after_ms and rep.speedup is not None
    measured = [g for g in rep.groups if g.latency_before_ms is not None]
    assert measured and all(g.latency_after_ms and g.channels_after < g.channels_before for g in measured)
    assert all(g.latency_before_ms is None for g in rep.groups if g.refused)
    assert rep.to_dict()["speedup"] == rep.speedup
    _, quiet = prune_model(m, StructuredConfig(ratio=0.5))
    assert quiet.latency_before_ms is None and quiet.speedup is None
    with pytest.raises(ConfigError, match="latency must be one of"):
        StructuredConfig(ratio=0.5, latency="fast")
