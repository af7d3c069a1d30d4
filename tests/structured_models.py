"""Small networks for the structured-pruning tests, built from a dict of weights.

Each builder takes its weights (and the few numbers that count channels) as arguments, so a test
can build the *same* network directly with smaller shapes and the kept weights: an independent
reference for the pruned graph. ``*_params(seed)`` draws random weights; every layer has a bias
with distinct values, which lets a test find which channels the pass kept.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _model(nodes, params, inputs, outputs, opset: int = 17, extra_inits=()) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in params.items()] + list(extra_inits)
    graph = helper.make_graph(nodes, "structured_test", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _rand(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _bias(rng, n):
    return (
        rng.permutation(n).astype(np.float32) * 0.01 + rng.standard_normal(n).astype(np.float32) * 0.1
    ).astype(np.float32)


def conv(name, x, out, pads=(1, 1, 1, 1), strides=(1, 1), group=1, op="Conv"):
    kw = {"pads": list(pads), "strides": list(strides)}
    if group != 1:
        kw["group"] = group
    return helper.make_node(op, [x, f"{name}.w", f"{name}.b"], [out], name=name, **kw)


# -- residual CNN: stem + BN, one identity block, one strided block with a 1x1 projection -----------
def residual_params(seed=0, c1=8, c2=6, c3=12):
    r = np.random.default_rng(seed)
    return {
        "stem.w": _rand(r, c1, 3, 3, 3), "stem.b": _bias(r, c1),
        "bn.s": (1 + _rand(r, c1, scale=0.1)), "bn.bias": _rand(r, c1, scale=0.1),
        "bn.m": _rand(r, c1, scale=0.1), "bn.v": (1 + np.abs(_rand(r, c1, scale=0.1))),
        "a.w": _rand(r, c2, c1, 3, 3), "a.b": _bias(r, c2), "b.w": _rand(r, c1, c2, 3, 3), "b.b": _bias(r, c1),
        "c.w": _rand(r, c3, c1, 3, 3), "c.b": _bias(r, c3), "p.w": _rand(r, c3, c1, 1, 1), "p.b": _bias(r, c3),
        "fc.w": _rand(r, 4, c3), "fc.b": _bias(r, 4),
    }  # fmt: skip


def residual_cnn(p) -> onnx.ModelProto:
    nodes = [
        conv("stem", "x", "s0"),
        helper.make_node("BatchNormalization", ["s0", "bn.s", "bn.bias", "bn.m", "bn.v"], ["s1"], name="bn"),
        helper.make_node("Relu", ["s1"], ["s2"]),
        helper.make_node("MaxPool", ["s2"], ["s3"], kernel_shape=[2, 2], strides=[2, 2]),
        conv("a", "s3", "a0"), helper.make_node("Relu", ["a0"], ["a1"]),
        conv("b", "a1", "b0"), helper.make_node("Add", ["b0", "s3"], ["r0"]), helper.make_node("Relu", ["r0"], ["r1"]),
        conv("c", "r1", "c0", strides=(2, 2)), helper.make_node("Relu", ["c0"], ["c1"]),
        conv("p", "r1", "p0", pads=(0, 0, 0, 0), strides=(2, 2)),
        helper.make_node("Add", ["c1", "p0"], ["r2"]), helper.make_node("Relu", ["r2"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1, name="fc"),
    ]  # fmt: skip
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 3, 16, 16])],
                  [helper.make_tensor_value_info("y", F, ["N", 4])])  # fmt: skip


# -- concat of two branches, a Slice of the joint axis, and a Split ---------------------------------
def concat_params(seed=0, ca=6, cb=4, cc=5, ce=8):
    r = np.random.default_rng(seed)
    return {
        "A.w": _rand(r, ca, 3, 3, 3), "A.b": _bias(r, ca), "B.w": _rand(r, cb, 3, 3, 3), "B.b": _bias(r, cb),
        "C.w": _rand(r, cc, ca + cb, 1, 1), "C.b": _bias(r, cc), "D.w": _rand(r, cc, 6, 1, 1), "D.b": _bias(r, cc),
        "E.w": _rand(r, ce, cc, 3, 3), "E.b": _bias(r, ce),
        "G.w": _rand(r, 3, ce // 2, 1, 1), "G.b": _bias(r, 3), "H.w": _rand(r, 3, ce // 2, 1, 1), "H.b": _bias(r, 3),
    }  # fmt: skip


def concat_net(p, slice_bounds=(2, 8), split=None) -> onnx.ModelProto:
    ce = p["E.w"].shape[0]
    split = list(split) if split is not None else [ce // 2, ce // 2]
    extra = [
        numpy_helper.from_array(np.array([slice_bounds[0]], np.int64), "sl.start"),
        numpy_helper.from_array(np.array([slice_bounds[1]], np.int64), "sl.end"),
        numpy_helper.from_array(np.array([1], np.int64), "sl.axes"),
        numpy_helper.from_array(np.array(split, np.int64), "sp.sizes"),
    ]
    nodes = [
        conv("A", "x", "a0"), helper.make_node("Relu", ["a0"], ["a1"]),
        conv("B", "x", "b0"), helper.make_node("Relu", ["b0"], ["b1"]),
        helper.make_node("Concat", ["a1", "b1"], ["cat"], axis=1),
        conv("C", "cat", "c0", pads=(0, 0, 0, 0)),
        helper.make_node("Slice", ["cat", "sl.start", "sl.end", "sl.axes"], ["sl"]),
        conv("D", "sl", "d0", pads=(0, 0, 0, 0)),
        helper.make_node("Add", ["c0", "d0"], ["cd"]), helper.make_node("Relu", ["cd"], ["cd1"]),
        conv("E", "cd1", "e0"), helper.make_node("Split", ["e0", "sp.sizes"], ["e1", "e2"], axis=1),
        conv("G", "e1", "g0", pads=(0, 0, 0, 0)), conv("H", "e2", "h0", pads=(0, 0, 0, 0)),
        helper.make_node("Add", ["g0", "h0"], ["y"]),
    ]  # fmt: skip
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", F, ["N", 3, 8, 8])], extra_inits=extra)  # fmt: skip


# -- MobileNet-style: 1x1 expand, depthwise 3x3, 1x1 project; then a grouped conv -------------------
def mobile_params(seed=0, cin=4, ce=8, cp=6, cg=8, groups=2):
    r = np.random.default_rng(seed)
    return {
        "exp.w": _rand(r, ce, cin, 1, 1), "exp.b": _bias(r, ce), "dw.w": _rand(r, ce, 1, 3, 3), "dw.b": _bias(r, ce),
        "proj.w": _rand(r, cp, ce, 1, 1), "proj.b": _bias(r, cp),
        "grp.w": _rand(r, cg, cp // groups, 3, 3), "grp.b": _bias(r, cg), "fc.w": _rand(r, cg, 3), "fc.b": _bias(r, 3),
    }  # fmt: skip


def mobile_net(p, groups=2) -> onnx.ModelProto:
    ce = p["dw.w"].shape[0]
    nodes = [
        conv("exp", "x", "e0", pads=(0, 0, 0, 0)), helper.make_node("Clip", ["e0", "lo", "hi"], ["e1"]),
        conv("dw", "e1", "d0", group=ce), helper.make_node("Relu", ["d0"], ["d1"]),
        conv("proj", "d1", "p0", pads=(0, 0, 0, 0)),
        conv("grp", "p0", "g0", group=groups), helper.make_node("Relu", ["g0"], ["g1"]),
        helper.make_node("ReduceMean", ["g1"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "fc.w"], ["y0"], name="fc"), helper.make_node("Add", ["y0", "fc.b"], ["y"]),
    ]  # fmt: skip
    extra = [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 4, 8, 8])],
                  [helper.make_tensor_value_info("y", F, ["N", 3])], extra_inits=extra)  # fmt: skip


# -- Conv -> Flatten (or Reshape) -> Gemm -> Gemm ------------------------------------------------------
def flatten_params(seed=0, c=6, h=5):
    r = np.random.default_rng(seed)
    return {"conv.w": _rand(r, c, 1, 3, 3), "conv.b": _bias(r, c), "fc1.w": _rand(r, h, c * 16, scale=0.1),
            "fc1.b": _bias(r, h), "fc2.w": _rand(r, h, 3), "fc2.b": _bias(r, 3)}  # fmt: skip


def flatten_net(p, how="flatten") -> onnx.ModelProto:
    c = p["conv.w"].shape[0]
    extra = []
    if how == "flatten":
        flat = helper.make_node("Flatten", ["c1"], ["f"], axis=1)
    else:  # an explicit reshape target: the pass must rewrite its channel entry
        extra = [numpy_helper.from_array(np.array([-1, c * 16], np.int64), "flat.shape")]
        flat = helper.make_node("Reshape", ["c1", "flat.shape"], ["f"])
    nodes = [
        conv("conv", "x", "c0", pads=(0, 0, 0, 0)), helper.make_node("Relu", ["c0"], ["c1"]), flat,
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["h0"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h0"], ["h1"]), helper.make_node("Gemm", ["h1", "fc2.w", "fc2.b"], ["y"], name="fc2"),
    ]  # fmt: skip
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 1, 6, 6])],
                  [helper.make_tensor_value_info("y", F, ["N", 3])], extra_inits=extra)  # fmt: skip


# -- transformer MLP: x + W2(silu(x W1 + b1)) + b2 over [N, S, D] ---------------------------------------
def mlp_params(seed=0, d=8, f=16):
    r = np.random.default_rng(seed)
    return {"ln.s": 1 + _rand(r, d, scale=0.1), "ln.b": _rand(r, d, scale=0.1), "w1": _rand(r, d, f),
            "b1": _bias(r, f), "w2": _rand(r, f, d), "b2": _bias(r, d)}  # fmt: skip


def mlp_net(p) -> onnx.ModelProto:
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln.s", "ln.b"], ["n"], axis=-1),
        helper.make_node("MatMul", ["n", "w1"], ["h0"], name="fc1"), helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Sigmoid", ["h1"], ["sg"]), helper.make_node("Mul", ["h1", "sg"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="fc2"), helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Add", ["o1", "x"], ["y"]),
    ]  # fmt: skip
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 5, 8])],
                  [helper.make_tensor_value_info("y", F, ["N", 5, 8])])  # fmt: skip


# -- Conv -> ConvTranspose -> Resize -> Pad -> Conv --------------------------------------------------
def decoder_params(seed=0, c1=6, c2=4):
    r = np.random.default_rng(seed)
    return {"enc.w": _rand(r, c1, 3, 3, 3), "enc.b": _bias(r, c1), "up.w": _rand(r, c1, c2, 2, 2), "up.b": _bias(r, c2),
            "out.w": _rand(r, 2, c2, 3, 3), "out.b": _bias(r, 2)}  # fmt: skip


def decoder_net(p) -> onnx.ModelProto:
    extra = [
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "rs.scales"),
        numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pad.pads"),
    ]
    nodes = [
        conv("enc", "x", "e0", strides=(2, 2)), helper.make_node("Relu", ["e0"], ["e1"]),
        helper.make_node("ConvTranspose", ["e1", "up.w", "up.b"], ["u0"], strides=[2, 2], name="up"),
        helper.make_node("Relu", ["u0"], ["u1"]),
        helper.make_node("Resize", ["u1", "", "rs.scales"], ["u2"], mode="nearest"),
        helper.make_node("Pad", ["u2", "pad.pads"], ["u3"]),
        conv("out", "u3", "y", pads=(0, 0, 0, 0)),
    ]  # fmt: skip
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", F, ["N", 2, 16, 16])], extra_inits=extra)  # fmt: skip


# -- refusals: a run-time reshape, a channel axis at a graph output, attention-style MatMul ---------
def refusal_net(seed=0) -> onnx.ModelProto:
    r = np.random.default_rng(seed)
    p = {"k1.w": _rand(r, 6, 3, 3, 3), "k1.b": _bias(r, 6), "k2.w": _rand(r, 6, 6, 3, 3), "k2.b": _bias(r, 6),
         "k3.w": _rand(r, 4, 6, 1, 1), "k3.b": _bias(r, 4), "q.w": _rand(r, 64, 8), "k.w": _rand(r, 64, 8)}  # fmt: skip
    nodes = [
        conv("k1", "x", "a0"), helper.make_node("Relu", ["a0"], ["a1"]),
        helper.make_node("Shape", ["a1"], ["shp"]),
        helper.make_node("Reshape", ["a1", "shp"], ["a2"]),  # a shape computed at run time
        conv("k2", "a2", "b0"),  # its output is also a graph output
        conv("k3", "b0", "c0", pads=(0, 0, 0, 0)), helper.make_node("Reshape", ["c0", "tok.shape"], ["c1"]),
        helper.make_node("MatMul", ["c1", "q.w"], ["q"], name="q"),
        helper.make_node("MatMul", ["c1", "k.w"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["att"], name="att"),
    ]  # fmt: skip
    extra = [numpy_helper.from_array(np.array([0, 0, -1], np.int64), "tok.shape")]
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                  [helper.make_tensor_value_info("att", F, ["N", 4, 4]), helper.make_tensor_value_info("b0", F, ["N", 6, 8, 8])],
                  extra_inits=extra)  # fmt: skip


# -- a BERT layer as torch exports it: attention reshapes computed from Shape, GELU as an Erf subgraph
def bert_params(seed=0, d=8, f=16, heads=2):
    r = np.random.default_rng(seed)
    p = {"wq": _rand(r, d, d), "bq": _bias(r, d), "wk": _rand(r, d, d), "bk": _bias(r, d),
         "wv": _rand(r, d, d), "bv": _bias(r, d), "wo": _rand(r, d, d), "bo": _bias(r, d),
         "ln1.s": 1 + _rand(r, d, scale=0.1), "ln1.b": _rand(r, d, scale=0.1),
         "w1": _rand(r, d, f), "b1": _bias(r, f), "w2": _rand(r, f, d), "b2": _bias(r, d),
         "ln2.s": 1 + _rand(r, d, scale=0.1), "ln2.b": _rand(r, d, scale=0.1)}  # fmt: skip
    p["heads"] = np.array([heads], np.int64)
    p["hd"] = np.array([d // heads], np.int64)
    return p


def bert_layer(p) -> onnx.ModelProto:
    """x [N, S, d] -> self-attention (heads split by a Reshape whose shape comes from Shape/Gather/
    Concat at run time) -> residual + LayerNorm -> MLP (MatMul, bias Add, exact GELU as
    ``x * 0.5 * (1 + erf(x / sqrt 2))``, MatMul, bias Add) -> residual + LayerNorm."""
    c = {"i0": np.array(0, np.int64), "i1": np.array(1, np.int64), "sqrt2": np.float32(np.sqrt(2.0)),
         "one": np.float32(1.0), "half": np.float32(0.5), "scale": np.float32(1 / np.sqrt(p["hd"][0]))}  # fmt: skip
    n = helper.make_node
    nodes = [n("Shape", ["x"], ["shp"]), n("Gather", ["shp", "i0"], ["bn"]), n("Gather", ["shp", "i1"], ["sn"]),
             n("Unsqueeze", ["bn", "ax0"], ["bu"]), n("Unsqueeze", ["sn", "ax0"], ["su"]),
             n("Concat", ["bu", "su", "heads", "hd"], ["hshape"], axis=0),
             n("Concat", ["bu", "su", "dmodel"], ["oshape"], axis=0)]  # fmt: skip
    for t in "qkv":
        nodes += [n("MatMul", ["x", f"w{t}"], [f"{t}0"], name=t), n("Add", [f"{t}0", f"b{t}"], [f"{t}1"]),
                  n("Reshape", [f"{t}1", "hshape"], [f"{t}2"]),
                  n("Transpose", [f"{t}2"], [f"{t}3"], perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3])]  # fmt: skip
    nodes += [
        n("MatMul", ["q3", "k3"], ["s0"]), n("Mul", ["s0", "scale"], ["s1"]), n("Softmax", ["s1"], ["pr"], axis=-1),
        n("MatMul", ["pr", "v3"], ["ctx0"]), n("Transpose", ["ctx0"], ["ctx1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx1", "oshape"], ["ctx"]),
        n("MatMul", ["ctx", "wo"], ["a0"], name="o"), n("Add", ["a0", "bo"], ["a1"]), n("Add", ["a1", "x"], ["a2"]),
        n("LayerNormalization", ["a2", "ln1.s", "ln1.b"], ["h"], axis=-1),
        n("MatMul", ["h", "w1"], ["f0"], name="fc1"), n("Add", ["b1", "f0"], ["f1"]),
        n("Div", ["f1", "sqrt2"], ["g0"]), n("Erf", ["g0"], ["g1"]), n("Add", ["g1", "one"], ["g2"]),
        n("Mul", ["f1", "g2"], ["g3"]), n("Mul", ["g3", "half"], ["g4"]),
        n("MatMul", ["g4", "w2"], ["m0"], name="fc2"), n("Add", ["b2", "m0"], ["m1"]), n("Add", ["m1", "h"], ["m2"]),
        n("LayerNormalization", ["m2", "ln2.s", "ln2.b"], ["y"], axis=-1),
    ]  # fmt: skip
    consts = {**p, **c, "ax0": np.array([0], np.int64), "dmodel": np.array([p["wo"].shape[1]], np.int64)}
    d = p["wq"].shape[0]
    return _model(nodes, consts, [helper.make_tensor_value_info("x", F, ["N", "S", d])],
                  [helper.make_tensor_value_info("y", F, ["N", "S", d])])  # fmt: skip


# -- two transformer-style MLP blocks on one residual stream: two neuron groups --------------------
def mlp_stack_params(seed=0, d=8, f=16):
    r = np.random.default_rng(seed)
    return {"w1": _rand(r, d, f), "b1": _bias(r, f), "w2": _rand(r, f, d), "b2": _bias(r, d),
            "w3": _rand(r, d, f), "b3": _bias(r, f), "w4": _rand(r, f, d), "b4": _bias(r, d)}  # fmt: skip


def mlp_stack(p) -> onnx.ModelProto:
    """x [N, S, d] -> x + W2 relu(x W1 + b1) + b2 -> the same with W3, W4 (names fc1..fc4)."""
    n = helper.make_node
    nodes = []
    for blk, (a, b) in enumerate(((1, 2), (3, 4))):
        x, out = ("x", "r1") if blk == 0 else ("r1", "y")
        nodes += [n("MatMul", [x, f"w{a}"], [f"h{a}"], name=f"fc{a}"), n("Add", [f"h{a}", f"b{a}"], [f"g{a}"]),
                  n("Relu", [f"g{a}"], [f"a{a}"]), n("MatMul", [f"a{a}", f"w{b}"], [f"h{b}"], name=f"fc{b}"),
                  n("Add", [f"h{b}", f"b{b}"], [f"g{b}"]), n("Add", [f"g{b}", x], [out])]  # fmt: skip
    return _model(nodes, p, [helper.make_tensor_value_info("x", F, ["N", "S", 8])],
                  [helper.make_tensor_value_info("y", F, ["N", "S", 8])])  # fmt: skip
