"""Attention-head pruning: head groups found through the attention pattern (Q/K/V projections ->
Reshape into heads -> Transpose -> Q K^T -> scale -> mask -> Softmax -> P V -> Transpose ->
Reshape -> output projection), checked by running the pruned model in onnxruntime against an
independent numpy forward pass over the kept heads; refusals leave the group untouched."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from structured_models import bert_layer, bert_params

from onnxcompress.calibration.capture import get_tensor
from onnxcompress.commands.render import format_structured_groups
from onnxcompress.errors import ConfigError
from onnxcompress.sessions import make_session
from onnxcompress.structured import StructuredConfig, analyze, count_flops, prune_model

D, H, HD = 16, 4, 4
F = TensorProto.FLOAT


def params(seed=0, weak=(1, 3)):
    r = np.random.default_rng(seed)
    p = {k: (r.standard_normal((D, D)) / 4).astype(np.float32) for k in ("wq", "wk", "wv", "wo")}
    p.update({k: r.uniform(-0.5, 0.5, D).astype(np.float32) for k in ("bq", "bk", "bv", "bo")})
    for h in weak:  # these heads have small weights: the l1 criterion removes them first
        for k in ("wq", "wk", "wv"):
            p[k][:, h * HD : (h + 1) * HD] *= 0.05
        p["wo"][h * HD : (h + 1) * HD] *= 0.05
    return p


def mha(p, mode="minus1", key_input=False, bias_first=False):
    """x [N, S, D], mask [N, 1, 1, S] -> x + MHA(x). ``mode``: ``minus1`` (Reshape targets
    [0, 0, -1, hd] and [0, 0, -1]), ``literal`` ([0, 0, heads, hd] and [0, 0, D], scale as a Div
    on Q), ``dynamic`` (the head dim read from another input's shape at run time). ``key_input``:
    K comes from a graph input instead of a projection (heads not tied)."""
    n = helper.make_node
    heads = p["wq"].shape[1] // HD
    consts = {**p, "scale": np.float32(1 / np.sqrt(HD)), "sqrt_hd": np.float32(np.sqrt(HD))}
    if mode == "literal":
        consts["split"] = np.array([0, 0, heads, HD], np.int64)
        consts["merge"] = np.array([0, 0, heads * HD], np.int64)
    else:
        consts["split"] = np.array([0, 0, -1, HD], np.int64)
        consts["merge"] = np.array([0, 0, -1], np.int64)
    nodes = []
    if mode == "dynamic":
        consts.update({"i2": np.array([2], np.int64), "head": np.array([0, 0, -1], np.int64)})
        nodes += [n("Shape", ["hint"], ["hs"]), n("Gather", ["hs", "i2"], ["hdim"]),
                  n("Concat", ["head", "hdim"], ["split_rt"], axis=0)]  # fmt: skip
    split = "split_rt" if mode == "dynamic" else "split"
    for t in "qkv":
        if t == "k" and key_input:
            nodes.append(n("Identity", ["kx"], ["k1"]))
        else:
            ins = [f"b{t}", f"{t}0"] if bias_first else [f"{t}0", f"b{t}"]
            nodes += [n("MatMul", ["x", f"w{t}"], [f"{t}0"], name=t), n("Add", ins, [f"{t}1"])]
        nodes += [n("Reshape", [f"{t}1", split], [f"{t}2"]),
                  n("Transpose", [f"{t}2"], [f"{t}3"], perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3])]  # fmt: skip
    if mode == "literal":
        nodes += [n("Div", ["q3", "sqrt_hd"], ["q4"]), n("MatMul", ["q4", "k3"], ["s1"])]
    else:
        nodes += [n("MatMul", ["q3", "k3"], ["s0"]), n("Mul", ["s0", "scale"], ["s1"])]
    nodes += [
        n("Add", ["s1", "mask"], ["s2"]), n("Softmax", ["s2"], ["pr"], axis=-1),
        n("MatMul", ["pr", "v3"], ["c0"]), n("Transpose", ["c0"], ["c1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["c1", "merge"], ["c2"]), n("MatMul", ["c2", "wo"], ["o0"], name="o"),
        n("Add", ["o0", "bo"], ["o1"]), n("Add", ["o1", "x"], ["y"]),
    ]  # fmt: skip
    inputs = [helper.make_tensor_value_info("x", F, ["N", "S", D]),
              helper.make_tensor_value_info("mask", F, ["N", 1, 1, "S"])]  # fmt: skip
    if key_input:
        inputs.append(helper.make_tensor_value_info("kx", F, ["N", "S", D]))
    if mode == "dynamic":
        inputs.append(helper.make_tensor_value_info("hint", F, [1, 1, "HD"]))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    g = helper.make_graph(nodes, "mha", inputs, [helper.make_tensor_value_info("y", F, ["N", "S", D])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def mha_numpy(p, x, mask, heads):
    """The same block in numpy, computed over the given heads only."""
    cols = np.concatenate([np.arange(h * HD, (h + 1) * HD) for h in heads])

    def split(t):  # [N, S, h*hd] -> [N, h, S, hd]
        return t.reshape(t.shape[0], t.shape[1], len(heads), HD).transpose(0, 2, 1, 3)

    q = split(x @ p["wq"][:, cols] + p["bq"][cols])
    k = split(x @ p["wk"][:, cols] + p["bk"][cols])
    v = split(x @ p["wv"][:, cols] + p["bv"][cols])
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(HD) + mask
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    ctx = (e / e.sum(axis=-1, keepdims=True)) @ v
    ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    return x + ctx @ p["wo"][cols] + p["bo"]


def feeds(n=2, s=5, seed=1, **extra):
    r = np.random.default_rng(seed)
    mask = np.zeros((n, 1, 1, s), np.float32)
    mask[0, ..., -2:] = -1e4  # padding in the first sequence
    return {"x": r.standard_normal((n, s, D)).astype(np.float32), "mask": mask, **extra}


def run(m, f):
    sess = make_session(m)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in f.items() if k in names})[0]


@pytest.mark.parametrize("mode,bias_first", [("minus1", False), ("literal", True)])
def test_heads_pruned_match_a_numpy_forward_over_the_kept_heads(mode, bias_first):
    p = params()
    m = mha(p, mode, bias_first=bias_first)
    groups = analyze(m).groups
    heads = next(g for g in groups if g.kind == "heads")
    assert heads.prunable and heads.unit == HD and heads.channels == H
    assert [s.name for s in heads.sources] == ["q", "k", "v"] and [c.name for c in heads.consumers] == ["o"]
    f = feeds()
    np.testing.assert_allclose(run(m, f), mha_numpy(p, f["x"], f["mask"], range(H)), rtol=1e-4, atol=1e-5)
    pm, rep = prune_model(m, StructuredConfig(heads=0.5, criterion="l1"))
    onnx.checker.check_model(pm, full_check=True)
    assert get_tensor(pm, "wq").shape == (D, 2 * HD) and get_tensor(pm, "wo").shape == (2 * HD, D)
    if mode == "literal":  # the literal head count and width were rewritten
        shapes = [get_tensor(pm, nd.input[1]).tolist() for nd in pm.graph.node if nd.op_type == "Reshape"]
        assert [0, 0, 2, HD] in shapes and [0, 0, 2 * HD] in shapes
    np.testing.assert_allclose(run(pm, f), mha_numpy(p, f["x"], f["mask"], [0, 2]), rtol=1e-4, atol=1e-5)
    row = next(r for r in rep.groups if r.name == "q")
    assert (row.channels_before, row.channels_after) == (H, 2)
    # fewer FLOPs in the projections and in the attention itself (Q K^T, P V)
    f0, f1 = count_flops(m, {"S": 8}), count_flops(pm, {"S": 8})
    assert f1.by_op["MatMul"] < 0.6 * f0.by_op["MatMul"]


def test_heads_follow_their_own_ratio_and_name_overrides():
    p = params()
    m = mha(p)
    pm, _ = prune_model(m, StructuredConfig(ratio=0.5, criterion="l1"))  # a channel ratio only: heads stay
    assert get_tensor(pm, "wq").shape == (D, D)
    pm, _ = prune_model(m, StructuredConfig(heads=0.5, names={"q": 0.25}, criterion="l1"))
    assert get_tensor(pm, "wq").shape == (D, 3 * HD)
    pm, _ = prune_model(m, StructuredConfig(heads=0.5, names={"q": None}, criterion="l1"))
    assert get_tensor(pm, "wq").shape == (D, D)
    # round_to counts channels: 2 heads of 4 channels are a multiple of 8
    pm, _ = prune_model(m, StructuredConfig(heads=0.5, round_to=8, criterion="l1"))
    assert get_tensor(pm, "wq").shape == (D, 2 * HD)
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ConfigError, match="heads"):
            StructuredConfig(heads=bad)  # type: ignore[arg-type]


def test_heads_refit_and_calibrated_criteria():
    p = params(seed=4, weak=())
    m = mha(p)
    r = np.random.default_rng(0)
    calib = [{"x": r.standard_normal((4, s, D)).astype(np.float32), "mask": np.zeros((4, 1, 1, s), np.float32)}
             for s in (3, 6, 9)]  # fmt: skip
    f = feeds(n=3, s=7, seed=5)
    f["mask"][:] = 0
    y = run(m, f)
    errs = {}
    for crit, refit in (("l2", "none"), ("activation", "none"), ("obs", "none"), ("obs", "lstsq")):
        pm, rep = prune_model(m, StructuredConfig(heads=0.5, criterion=crit, refit=refit), calib)
        assert get_tensor(pm, "wo").shape == (2 * HD, D)
        errs[crit, refit] = float(np.linalg.norm(run(pm, f) - y) / np.linalg.norm(y))
        if refit == "lstsq":
            assert rep.refit and rep.refit[0].layer == "o" and rep.refit[0].error_after < rep.refit[0].error_before
    assert errs["obs", "lstsq"] < errs["obs", "none"]


def test_exported_attention_with_runtime_shapes_and_a_shared_literal_concat():
    p = bert_params(heads=2)
    m = bert_layer(p)  # Reshape shapes: Concat(Shape -> Gather -> Unsqueeze, [heads], [hd]), one Concat for q/k/v
    g = next(g for g in analyze(m).groups if g.name == "q")
    assert g.kind == "heads" and g.prunable and g.channels == 2 and g.unit == 4
    pm, _ = prune_model(m, StructuredConfig(heads=0.5, criterion="l1"))
    concat = next(nd for nd in pm.graph.node if nd.op_type == "Concat" and "heads" not in nd.input and "bu" in nd.input
                  and len(nd.input) == 4)  # fmt: skip
    assert get_tensor(pm, concat.input[2]).tolist() == [1]  # the literal head count
    assert len(pm.graph.initializer) == len(m.graph.initializer) + 2  # one new constant per rewritten Concat
    kept_cols = [int(np.flatnonzero(p["bq"] == v)[0]) for v in get_tensor(pm, "bq")]
    assert kept_cols in ([0, 1, 2, 3], [4, 5, 6, 7])
    h = kept_cols[0] // 4
    q = dict(p)
    cols = np.array(kept_cols)
    for t in "qkv":
        q[f"w{t}"], q[f"b{t}"] = p[f"w{t}"][:, cols], p[f"b{t}"][cols]
    q["wo"], q["heads"] = p["wo"][cols], np.array([1], np.int64)
    ref = bert_layer(q)
    for t in ref.graph.initializer:  # the merge back: [N, S, 4] (bert_layer takes it from wo's output width)
        if t.name == "dmodel":
            t.CopyFrom(numpy_helper.from_array(np.array([4], np.int64), "dmodel"))
    x = np.random.default_rng(h).standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(run(pm, {"x": x}), run(ref, {"x": x}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", ["untied", "dynamic"])
def test_refused_head_groups_stay_untouched_with_the_reason(how):
    p = params()
    m = mha(p, "dynamic" if how == "dynamic" else "minus1", key_input=how == "untied")
    rows = analyze(m).summary()
    q = next(r for r in rows if r["name"] == "q")
    want = "heads on one operand only" if how == "untied" else "cannot follow"
    assert q["refused"] is not None and want in q["refused"], q["refused"]
    pm, rep = prune_model(m, StructuredConfig(heads=0.5, criterion="l1"))
    for w in ("wq", "wv", "wo"):
        assert get_tensor(pm, w).shape == (D, D)
    assert all(r.channels_after == r.channels_before for r in rep.groups)


def test_inspect_prints_head_groups():
    text = format_structured_groups(analyze(mha(params())).summary())
    assert "4 heads" in text and "attention heads of 4 channels each" in text


def test_cli_structured_heads_and_inspect(tmp_path, capsys):
    from onnxcompress.cli import main

    src, out, report = tmp_path / "mha.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(mha(params()), str(src))
    assert main(["inspect", str(src), "--groups"]) == 0
    assert "4 heads" in capsys.readouterr().out
    rc = main(["compress", str(src), "-o", str(out), "--structured-heads", "0.5", "--structured-latency", "none", "--min-elements", "16",
               "--report", str(report), "--quiet"])  # fmt: skip
    assert rc == 0
    groups = {g["name"]: g for g in json.loads(report.read_text())["structured"]["groups"]}
    assert (groups["q"]["channels_before"], groups["q"]["channels_after"]) == (4, 2)
    bad = tmp_path / "bad.onnx"
    assert main(["compress", str(src), "-o", str(bad), "--structured-heads", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heads" in err[0]
    assert not bad.exists()


def test_fused_qkv_cut_by_split():
    """One MatMul for Q, K and V, cut by a Split: the three pieces' heads are tied like separate
    projections, and the Split sizes are rewritten."""
    p = params()
    m = mha(p)
    g = m.graph
    w = np.concatenate([p["wq"], p["wk"], p["wv"]], axis=1)
    b = np.concatenate([p["bq"], p["bk"], p["bv"]])
    keep = [nd for nd in g.node if nd.name not in ("q", "k", "v") and nd.output[0] not in ("q1", "k1", "v1")]
    n = helper.make_node
    fused = [n("MatMul", ["x", "wqkv"], ["f0"], name="qkv"), n("Add", ["f0", "bqkv"], ["f1"]),
             n("Split", ["f1", "sizes"], ["q1", "k1", "v1"], axis=-1)]  # fmt: skip
    del g.node[:]
    g.node.extend(fused + keep)
    g.initializer.extend([numpy_helper.from_array(w, "wqkv"), numpy_helper.from_array(b, "bqkv"),
                          numpy_helper.from_array(np.array([D, D, D], np.int64), "sizes")])  # fmt: skip
    heads = next(gr for gr in analyze(m).groups if gr.name == "qkv")
    assert heads.kind == "heads" and heads.prunable and heads.channels == H
    pm, _ = prune_model(m, StructuredConfig(heads=0.5, criterion="l1"))
    assert get_tensor(pm, "wqkv").shape == (D, 3 * 2 * HD)
    f = feeds()
    np.testing.assert_allclose(run(pm, f), mha_numpy(p, f["x"], f["mask"], [0, 2]), rtol=1e-4, atol=1e-5)


def test_global_head_allocation_takes_the_cheapest_heads_of_any_layer():
    a = onnx.compose.add_prefix(mha(params(seed=1, weak=(1, 3))), "a_")
    b = onnx.compose.add_prefix(mha(params(seed=2, weak=())), "b_")
    m = onnx.compose.merge_models(a, b, io_map=[("a_y", "b_x")])
    assert sum(g.kind == "heads" and g.prunable for g in analyze(m).groups) == 2
    uniform, _ = prune_model(m, StructuredConfig(heads=0.25, criterion="l1"))
    assert get_tensor(uniform, "a_wq").shape[1] == get_tensor(uniform, "b_wq").shape[1] == 3 * HD
    pm, _ = prune_model(m, StructuredConfig(heads=0.25, heads_allocation="global", criterion="l1"))
    assert get_tensor(pm, "a_wq").shape[1] == 2 * HD and get_tensor(pm, "b_wq").shape[1] == 4 * HD
    with pytest.raises(ConfigError, match="heads_allocation"):
        StructuredConfig(heads_allocation="greedy")
