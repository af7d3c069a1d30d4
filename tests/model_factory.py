"""Small ONNX models built in code for the converter's tests: every weight role, Constant nodes,
an If subgraph, shared tensors, biases and norms, in a chosen opset and float type."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def zoo_model(opset: int = 17, dtype=np.float32, seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> BN -> Relu -> Flatten -> Gemm(transB) -> MatMul -> If(MatMul with a
    Constant weight in each branch) -> logits[N,10]; plus a Gather embedding branch."""
    rng = np.random.default_rng(seed)
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))

    def r(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(dtype)

    inits = [
        _init("conv.w", r(16, 3, 3, 3) * 2),
        _init("conv.b", r(16)),
        _init("bn.scale", np.ones(16, dtype)),
        _init("bn.bias", np.zeros(16, dtype)),
        _init("bn.mean", np.zeros(16, dtype)),
        _init("bn.var", np.ones(16, dtype)),
        _init("fc1.w", r(64, 16 * 8 * 8)),  # Gemm transB=1: [out, in]
        _init("fc1.b", r(64)),
        _init("fc2.w", r(64, 48)),  # MatMul: [in, out]
        _init("emb", r(100, 48)),
        _init("cond", np.array(True)),
    ]
    then_w = helper.make_node("Constant", [], ["head.then.w"], value=_init("v", r(48, 10)))
    else_w = helper.make_node("Constant", [], ["head.else.w"], value=_init("v", r(48, 10)))
    then_g = helper.make_graph(
        [then_w, helper.make_node("MatMul", ["h2", "head.then.w"], ["out_t"])],
        "then",
        [],
        [helper.make_tensor_value_info("out_t", t, None)],
    )
    else_g = helper.make_graph(
        [else_w, helper.make_node("MatMul", ["h2", "head.else.w"], ["out_e"])],
        "else",
        [],
        [helper.make_tensor_value_info("out_e", t, None)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c1"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(
            "BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn1"], name="bn"
        ),
        helper.make_node("Relu", ["bn1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "fc1.w", "fc1.b"], ["h1"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h1"], ["r2"]),
        helper.make_node("Gather", ["emb", "ids"], ["e1"], axis=0, name="emb"),
        helper.make_node("ReduceMean" if opset < 18 else "ReduceMean", ["e1"], ["e2"], axes=[1], keepdims=0)
        if opset < 18
        else helper.make_node("ReduceMean", ["e1", "axes1"], ["e2"], keepdims=0),
        helper.make_node("MatMul", ["r2", "fc2.w"], ["h2a"], name="fc2"),
        helper.make_node("Add", ["h2a", "e2"], ["h2"]),
        helper.make_node("If", ["cond"], ["logits"], then_branch=then_g, else_branch=else_g, name="head"),
    ]
    if opset >= 18:
        inits.append(_init("axes1", np.array([1], dtype=np.int64)))
    graph = helper.make_graph(
        nodes,
        "zoo",
        [
            helper.make_tensor_value_info("x", t, ["N", 3, 8, 8]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4]),
        ],
        [helper.make_tensor_value_info("logits", t, ["N", 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="model_factory"
    )
    model.ir_version = 7 if opset <= 15 else 8
    model.metadata_props.add(key="labels", value="zero,one,two")
    model.doc_string = "zoo model for tests"
    onnx.checker.check_model(model, full_check=True)
    return model


def zoo_inputs(n: int = 4, dtype=np.float32, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3, 8, 8)).astype(dtype), "ids": rng.integers(0, 100, (n, 4))}


# ------------------------------------------------------------------------------------------ calibration


def _f32(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def state_model(batch: int | str = "batch", seed: int = 0) -> onnx.ModelProto:
    """A voice-activity-style model: ``x [batch, 64]``, a scalar sample rate ``sr []`` (int64) and a
    recurrent ``state [2, batch, 16]`` (batch on axis 1) -> ``out [batch, 8]``, ``new_state``.

    ``out = Relu(x @ W1 * (sr / 16000) + sum_0(state @ Ws)) @ W3``; ``batch`` may be fixed (e.g. 1).
    """
    rng = np.random.default_rng(seed)
    inits = [
        _init("W1", _f32(rng, 64, 16)),
        _init("Ws", _f32(rng, 16, 16)),
        _init("W3", _f32(rng, 16, 8)),
        _init("sr_scale", np.array(1 / 16000, np.float32)),
        _init("axes0", np.array([0], np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "sr_scale"], ["srs"]),
        helper.make_node("Mul", ["h1", "srs"], ["h1s"]),
        helper.make_node("MatMul", ["state", "Ws"], ["s1"]),
        helper.make_node("ReduceSum", ["s1", "axes0"], ["s2"], keepdims=0),
        helper.make_node("Add", ["h1s", "s2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("MatMul", ["h3", "W3"], ["out"]),
        helper.make_node("Tanh", ["s1"], ["new_state"]),
    ]
    graph = helper.make_graph(
        nodes, "state_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, []),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 8]),
         helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [2, batch, 16])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def state_inputs(n: int = 40, seed: int = 1) -> dict[str, np.ndarray]:
    """Calibration data for :func:`state_model`: ``sr`` 0-d, ``state`` stacked on axis 1."""
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, 64)).astype(np.float32),
        "sr": np.array(16000, np.int64),
        "state": rng.standard_normal((2, n, 16)).astype(np.float32),
    }


def branch_model(seed: int = 0) -> onnx.ModelProto:
    """Weights inside (nested) If branches, chosen by a scalar sample rate ``sr``:
    ``h = Relu(x @ W0)``; ``sr == 16000``: ``Relu(h @ Wt) @ Wt2`` (``Wt`` a main-graph initializer
    feeding the If, ``Wt2`` a Constant in the branch); else ``sr > 4000``: ``h @ We`` (an initializer
    of the nested branch), else ``h @ We2`` (a Constant); ``out = Relu(y) @ Wout``."""
    rng = np.random.default_rng(seed)
    f = TensorProto.FLOAT

    def const(name: str, arr: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=_init(name + ".v", arr))

    inner_then = helper.make_graph(
        [helper.make_node("MatMul", ["h", "We"], ["y_et"])], "sr_mid", [],
        [helper.make_tensor_value_info("y_et", f, None)], [_init("We", _f32(rng, 32, 16))],
    )  # fmt: skip
    inner_else = helper.make_graph(
        [const("We2", _f32(rng, 32, 16)), helper.make_node("MatMul", ["h", "We2"], ["y_ee"])], "sr_low", [],
        [helper.make_tensor_value_info("y_ee", f, None)],
    )  # fmt: skip
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["h", "Wt"], ["a_t"]), helper.make_node("Relu", ["a_t"], ["r_t"]),
         const("Wt2", _f32(rng, 32, 16)), helper.make_node("MatMul", ["r_t", "Wt2"], ["y_t"])],
        "sr_16k", [], [helper.make_tensor_value_info("y_t", f, None)],
    )  # fmt: skip
    else_g = helper.make_graph(
        [helper.make_node("Greater", ["sr", "k4000"], ["c4"]),
         helper.make_node("If", ["c4"], ["y_e"], then_branch=inner_then, else_branch=inner_else, name="mid")],
        "sr_other", [], [helper.make_tensor_value_info("y_e", f, None)],
    )  # fmt: skip
    inits = [
        _init("W0", _f32(rng, 32, 32)),
        _init("Wt", _f32(rng, 32, 32)),
        _init("Wout", _f32(rng, 16, 8)),
        _init("k16000", np.array(16000, np.int64)),
        _init("k4000", np.array(4000, np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Equal", ["sr", "k16000"], ["c16"]),
        helper.make_node("If", ["c16"], ["y"], then_branch=then_g, else_branch=else_g, name="rate"),
        helper.make_node("Relu", ["y"], ["ry"]),
        helper.make_node("MatMul", ["ry", "Wout"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "branch_model",
        [helper.make_tensor_value_info("x", f, ["batch", 32]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", f, ["batch", 8])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def recurrent_model(seed: int = 0, hidden: int = 16) -> onnx.ModelProto:
    """``x [batch, seq, 8]`` (with ``lens [batch]`` int32 and a GRU ``h0 [2, batch, hidden]``, batch
    on axis 1) -> Transpose -> bidirectional LSTM (sequence_lens) -> [seq, batch, 2*hidden] ->
    bidirectional GRU (linear_before_reset 0, initial_h = h0, only Y_h used) -> [batch, 2*hidden]
    -> MatMul Wout -> ``out [batch, 4]``."""
    rng = np.random.default_rng(seed)
    h = hidden
    f = TensorProto.FLOAT
    inits = [
        _init("lstm.W", _f32(rng, 2, 4 * h, 8, scale=0.4)),
        _init("lstm.R", _f32(rng, 2, 4 * h, h, scale=0.3)),
        _init("lstm.B", _f32(rng, 2, 8 * h, scale=0.1)),
        _init("gru.W", _f32(rng, 2, 3 * h, 2 * h, scale=0.3)),
        _init("gru.R", _f32(rng, 2, 3 * h, h, scale=0.3)),
        _init("gru.B", _f32(rng, 2, 6 * h, scale=0.1)),
        _init("Wout", _f32(rng, 2 * h, 4)),
        _init("shape_sb2h", np.array([0, 0, 2 * h], np.int64)),
        _init("shape_b2h", np.array([0, 2 * h], np.int64)),
    ]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["xt", "lstm.W", "lstm.R", "lstm.B", "lens"], ["ly"], hidden_size=h,
                         direction="bidirectional", name="lstm"),
        helper.make_node("Transpose", ["ly"], ["lyt"], perm=[0, 2, 1, 3]),  # [seq, batch, 2, h]
        helper.make_node("Reshape", ["lyt", "shape_sb2h"], ["g_in"]),
        helper.make_node("GRU", ["g_in", "gru.W", "gru.R", "gru.B", "", "h0"], ["", "gh"], hidden_size=h,
                         direction="bidirectional", name="gru"),
        helper.make_node("Transpose", ["gh"], ["ght"], perm=[1, 0, 2]),  # [batch, 2, h]
        helper.make_node("Reshape", ["ght", "shape_b2h"], ["feat"]),
        helper.make_node("MatMul", ["feat", "Wout"], ["out"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "recurrent",
        [helper.make_tensor_value_info("x", f, ["batch", "seq", 8]),
         helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info("h0", f, [2, "batch", h])],
        [helper.make_tensor_value_info("out", f, ["batch", 4])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def recurrent_inputs(n: int = 48, seq: int = 6, hidden: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((n, seq, 8)).astype(np.float32),
        "lens": rng.integers(2, seq + 1, n).astype(np.int32),
        "h0": (rng.standard_normal((2, n, hidden)) * 0.5).astype(np.float32),
    }
