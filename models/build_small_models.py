"""Build two small real-shaped test models with numpy and ``onnx.helper`` (no torch, no download).

Why: the digit classifiers in ``models/`` are plain initializer graphs of a few large tensors. Real
small exported models look different, and that is where the default settings lose most of their
gain: dozens of small convolutions and 1-D tensors, recurrent cells, weights in ``Constant`` nodes
inside ``If`` branches, shape constants. These two files reproduce those shapes:

``vad_rnn.onnx`` (voice-activity-detector style, like Silero VAD)
    inputs ``input`` float32 ``[batch, samples]``, ``state`` float32 ``[2, batch, 64]`` and a scalar
    int64 ``sr``; outputs ``output`` ``[batch, 1]`` (speech probability) and ``stateN``
    ``[2, batch, 64]``. An ``If`` on ``sr == 16000`` picks one of two branches, and every weight of
    a branch is a ``Constant`` node inside it: the 16 kHz branch is a strided Conv encoder and one
    LSTM (``state`` = its h and c), the 8 kHz branch a Conv encoder and two stacked GRUs
    (``state`` = their two h).
``mobilenet_se.onnx`` (MobileNetV3-style classifier)
    input ``input`` float32 ``[N, 3, 32, 32]``, output ``logits`` ``[N, 10]``: stem conv, inverted
    residual blocks (pointwise expand, depthwise 3x3, squeeze-excite on some, pointwise project,
    residual adds) with *unfolded* ``BatchNormalization`` after every conv (four 1-D tensors each),
    hard-swish / ReLU6 activations, a 1x1 head conv, global pooling and a Gemm classifier.

The weights are seeded random (He-scaled, so activations keep a sane range), not trained: the
models are for measuring sizes and output fidelity, not accuracy. Same script, same numpy and onnx
versions: byte-identical files (``models/manifest.json`` records their sha256 under
``synthetic_models``).

    python models/build_small_models.py          # writes models/vad_rnn.onnx, models/mobilenet_se.onnx
    python models/build_small_models.py --check  # rebuild in memory, compare with the files
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET = 17
HIDDEN = 64
SEED = 2026


# --------------------------------------------------------------------------- helpers


class _Weights:
    """Seeded He-scaled random tensors."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def he(self, *shape: int, fan_in: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def small(self, *shape: int, scale: float = 0.05) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def uniform(self, lo: float, hi: float, *shape: int) -> np.ndarray:
        return self.rng.uniform(lo, hi, shape).astype(np.float32)


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(arr, name), name=name + "_node"
    )


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# --------------------------------------------------------------------------- VAD (If + Constant + RNN)


def _vad_branch(w: _Weights, tag: str, rnn: str, kernel: int, stride: int) -> onnx.GraphProto:
    """One sample-rate branch: every weight a Constant node of the branch (as torch.jit exports
    the weights of a scripted ``if``)."""
    h = HIDDEN
    nodes: list[onnx.NodeProto] = []
    p = f"{tag}."

    def conv(x: str, out: str, wshape: tuple[int, ...], strides: int, pads: int, name: str) -> str:
        fan_in = int(np.prod(wshape[1:]))
        nodes.append(_const(f"{p}{name}.weight", w.he(*wshape, fan_in=fan_in)))
        nodes.append(_const(f"{p}{name}.bias", w.small(wshape[0])))
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{p}{name}.weight", f"{p}{name}.bias"], [out + "_c"], strides=[strides],
                pads=[pads, pads], name=f"{p}{name}",
            )
        )  # fmt: skip
        nodes.append(helper.make_node("Relu", [out + "_c"], [out], name=f"{p}{name}.relu"))
        return out

    nodes.append(_const(p + "axes1", _i64(1)))
    nodes.append(helper.make_node("Unsqueeze", ["input", p + "axes1"], [p + "x"], name=p + "unsqueeze"))
    x = conv(p + "x", p + "e1", (h, 1, kernel), stride, 0, "encoder.0")
    x = conv(x, p + "e2", (h, h, 3), 2, 1, "encoder.1")
    x = conv(x, p + "e3", (h, h, 3), 2, 1, "encoder.2")
    nodes.append(
        helper.make_node("Transpose", [x], [p + "seq"], perm=[2, 0, 1], name=p + "to_seq")
    )  # [T, B, H]
    nodes.append(_const(p + "split2", _i64(1, 1)))
    nodes.append(
        helper.make_node(
            "Split", ["state", p + "split2"], [p + "s0", p + "s1"], axis=0, name=p + "split_state"
        )
    )
    scale = 1.0 / np.sqrt(h)
    if rnn == "lstm":
        nodes.append(_const(p + "lstm.W", w.uniform(-scale, scale, 1, 4 * h, h)))
        nodes.append(_const(p + "lstm.R", w.uniform(-scale, scale, 1, 4 * h, h)))
        nodes.append(_const(p + "lstm.B", w.uniform(-scale, scale, 1, 8 * h)))
        nodes.append(
            helper.make_node(
                "LSTM", [p + "seq", p + "lstm.W", p + "lstm.R", p + "lstm.B", "", p + "s0", p + "s1"],
                ["", p + "h", p + "c"], hidden_size=h, name=p + "lstm",
            )
        )  # fmt: skip
        last, new_state = p + "h", [p + "h", p + "c"]
    else:
        seq = p + "seq"
        outs = []
        for layer, s in enumerate((p + "s0", p + "s1")):
            q = f"{p}gru{layer}."
            nodes.append(_const(q + "W", w.uniform(-scale, scale, 1, 3 * h, h)))
            nodes.append(_const(q + "R", w.uniform(-scale, scale, 1, 3 * h, h)))
            nodes.append(_const(q + "B", w.uniform(-scale, scale, 1, 6 * h)))
            nodes.append(
                helper.make_node(
                    "GRU", [seq, q + "W", q + "R", q + "B", "", s], [q + "Y", q + "h"], hidden_size=h,
                    linear_before_reset=1, name=q[:-1],
                )
            )  # fmt: skip
            nodes.append(_const(q + "axes", _i64(1)))
            nodes.append(helper.make_node("Squeeze", [q + "Y", q + "axes"], [q + "seq"], name=q + "squeeze"))
            seq = q + "seq"
            outs.append(q + "h")
        last, new_state = outs[-1], outs
    nodes.append(_const(p + "axes0", _i64(0)))
    nodes.append(helper.make_node("Squeeze", [last, p + "axes0"], [p + "last"], name=p + "squeeze_h"))
    nodes.append(helper.make_node("Relu", [p + "last"], [p + "dr"], name=p + "decoder.relu"))
    nodes.append(_const(p + "decoder.weight", w.he(h, 1, fan_in=h)))
    nodes.append(_const(p + "decoder.bias", w.small(1)))
    nodes.append(
        helper.make_node("MatMul", [p + "dr", p + "decoder.weight"], [p + "dm"], name=p + "decoder.matmul")
    )
    nodes.append(helper.make_node("Add", [p + "dm", p + "decoder.bias"], [p + "da"], name=p + "decoder.add"))
    nodes.append(helper.make_node("Sigmoid", [p + "da"], [p + "out"], name=p + "decoder.sigmoid"))
    nodes.append(helper.make_node("Concat", new_state, [p + "stateN"], axis=0, name=p + "concat_state"))
    return helper.make_graph(
        nodes,
        f"{tag}_branch",
        [],
        [
            helper.make_tensor_value_info(p + "out", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info(p + "stateN", TensorProto.FLOAT, [2, "batch", h]),
        ],
    )


def build_vad() -> onnx.ModelProto:
    w = _Weights(SEED)
    then_g = _vad_branch(w, "sr16k", "lstm", kernel=32, stride=16)
    else_g = _vad_branch(w, "sr8k", "gru", kernel=16, stride=8)
    nodes = [
        helper.make_node("Constant", [], ["sr16000"], value=numpy_helper.from_array(np.array(16000, np.int64)), name="sr16000"),
        helper.make_node("Equal", ["sr", "sr16000"], ["is16k"], name="is16k"),
        helper.make_node("If", ["is16k"], ["output", "stateN"], then_branch=then_g, else_branch=else_g, name="If_sr"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "vad_rnn",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", HIDDEN]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", HIDDEN]),
        ],
    )
    return _finish(graph, "vad_rnn")


# --------------------------------------------------------------------------- MobileNet + SE

# (expansion, output channels, stride, squeeze-excite, activation) per inverted-residual block
BLOCKS = (
    (1, 16, 1, False, "relu"),
    (4, 24, 2, False, "relu"),
    (3, 24, 1, False, "relu"),
    (3, 40, 2, True, "hswish"),
    (3, 40, 1, True, "hswish"),
    (3, 40, 1, True, "hswish"),
    (3, 48, 1, True, "hswish"),
    (3, 48, 1, True, "hswish"),
    (3, 64, 2, True, "hswish"),
)
STEM, HEAD, CLASSES = 16, 192, 10


class _Cnn:
    def __init__(self, w: _Weights) -> None:
        self.w = w
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, stride: int, name: str, groups: int = 1) -> str:
        fan_in = cin // groups * k * k
        wt = self.init(f"{name}.conv.weight", self.w.he(cout, cin // groups, k, k, fan_in=fan_in))
        c = self.node(
            "Conv", [x, wt], f"{name}.conv", kernel_shape=[k, k], strides=[stride, stride],
            pads=[k // 2] * 4, group=groups,
        )  # fmt: skip
        bn = [
            self.init(f"{name}.bn.weight", self.w.uniform(0.6, 1.4, cout)),
            self.init(f"{name}.bn.bias", self.w.small(cout, scale=0.1)),
            self.init(f"{name}.bn.running_mean", self.w.small(cout, scale=0.1)),
            self.init(f"{name}.bn.running_var", self.w.uniform(0.5, 1.5, cout)),
        ]
        return self.node("BatchNormalization", [c, *bn], f"{name}.bn", epsilon=1e-5)

    def act(self, x: str, kind: str, name: str) -> str:
        if kind == "relu":
            return self.node("Relu", [x], f"{name}.relu")
        if kind == "relu6":
            return self.node("Clip", [x, "zero", "six"], f"{name}.relu6")
        return self.node("HardSwish", [x], f"{name}.hswish")

    def se(self, x: str, c: int, name: str) -> str:
        mid = max(8, c // 4)
        s = self.node("GlobalAveragePool", [x], f"{name}.pool")
        w1 = self.init(f"{name}.fc1.weight", self.w.he(mid, c, 1, 1, fan_in=c))
        b1 = self.init(f"{name}.fc1.bias", self.w.small(mid))
        s = self.node("Conv", [s, w1, b1], f"{name}.fc1", kernel_shape=[1, 1])
        s = self.node("Relu", [s], f"{name}.relu")
        w2 = self.init(f"{name}.fc2.weight", self.w.he(c, mid, 1, 1, fan_in=mid))
        b2 = self.init(f"{name}.fc2.bias", self.w.small(c))
        s = self.node("Conv", [s, w2, b2], f"{name}.fc2", kernel_shape=[1, 1])
        s = self.node("HardSigmoid", [s], f"{name}.hsigmoid", alpha=1.0 / 6, beta=0.5)
        return self.node("Mul", [x, s], f"{name}.scale")


def build_mobilenet() -> onnx.ModelProto:
    net = _Cnn(_Weights(SEED + 1))
    net.init("zero", np.array(0.0, np.float32))
    net.init("six", np.array(6.0, np.float32))
    x = net.conv_bn("input", 3, STEM, 3, 2, "features.0")
    x = net.act(x, "relu6", "features.0")
    cin = STEM
    for i, (t, cout, stride, se, act) in enumerate(BLOCKS, start=1):
        name = f"features.{i}"
        mid = cin * t
        y = x
        if t != 1:
            y = net.act(net.conv_bn(y, cin, mid, 1, 1, f"{name}.expand"), act, f"{name}.expand")
        y = net.act(net.conv_bn(y, mid, mid, 3, stride, f"{name}.dw", groups=mid), act, f"{name}.dw")
        if se:
            y = net.se(y, mid, f"{name}.se")
        y = net.conv_bn(y, mid, cout, 1, 1, f"{name}.project")
        if stride == 1 and cin == cout:
            y = net.node("Add", [x, y], f"{name}.residual")
        x, cin = y, cout
    x = net.act(net.conv_bn(x, cin, HEAD, 1, 1, "head"), "hswish", "head")
    x = net.node("GlobalAveragePool", [x], "pool")
    x = net.node("Flatten", [x], "flatten", axis=1)
    wc = net.init("classifier.weight", net.w.he(CLASSES, HEAD, fan_in=HEAD))
    bc = net.init("classifier.bias", net.w.small(CLASSES))
    net.nodes.append(helper.make_node("Gemm", [x, wc, bc], ["logits"], transB=1, name="classifier"))
    graph = helper.make_graph(
        net.nodes,
        "mobilenet_se",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        initializer=net.inits,
    )
    return _finish(graph, "mobilenet_se")


# --------------------------------------------------------------------------- output


def _finish(graph: onnx.GraphProto, name: str) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="onnxcompress models/build_small_models.py",
        producer_version="1",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


BUILDERS = {"vad_rnn": build_vad, "mobilenet_se": build_mobilenet}
DESCRIPTIONS = {
    "vad_rnn": "VAD-style: If(sr == 16000) over two branches whose weights are Constant nodes inside "
    "the branch; 16 kHz: Conv1d encoder + LSTM (state = h, c); 8 kHz: Conv1d encoder + 2 stacked GRUs "
    "(state = two h); inputs input [batch, samples], state [2, batch, 64], sr int64 scalar",
    "mobilenet_se": "MobileNetV3-style CNN: stem conv, 9 inverted-residual blocks (pointwise expand, "
    "depthwise 3x3, squeeze-excite on 6, pointwise project, residual adds), unfolded BatchNormalization "
    "after every conv, head 1x1 conv, GAP, Gemm; input [N, 3, 32, 32], 10 logits",
}


def build_all() -> dict[str, bytes]:
    """Each model's serialized bytes (deterministic)."""
    return {name: build().SerializeToString() for name, build in BUILDERS.items()}


def describe(name: str, data: bytes) -> dict[str, object]:
    """The manifest entry of one built model."""
    model = onnx.load_from_string(data)
    from onnxcompress.inventory import build_inventory

    inv = build_inventory(model)
    floats = inv.weights
    return {
        "name": name,
        "file": f"{name}.onnx",
        "sha256": hashlib.sha256(data).hexdigest(),
        "file_bytes": len(data),
        "float_tensors": len(floats),
        "float_elements": sum(w.size for w in floats),
        "compressible_tensors": len(inv.compressible()),
        "compressible_elements": sum(w.size for w in inv.compressible()),
        "constant_nodes": sum(1 for w in floats if w.source == "constant"),
        "opset": OPSET,
        "inputs": [
            {"name": i.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name,
             "shape": [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]}
            for i in model.graph.input
        ],  # fmt: skip
        "outputs": [o.name for o in model.graph.output],
        "built_by": "python models/build_small_models.py (numpy seeded random weights, onnx.helper; not trained)",
        "description": DESCRIPTIONS[name],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", default=str(HERE), help="folder to write to (default: models/)")
    ap.add_argument("--check", action="store_true", help="compare a rebuild with the files; write nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    built = build_all()
    if args.check:
        bad = [n for n, data in built.items() if (out / f"{n}.onnx").read_bytes() != data]
        print("identical" if not bad else f"differ: {', '.join(bad)}")
        return 1 if bad else 0
    for name, data in built.items():
        (out / f"{name}.onnx").write_bytes(data)
        print(f"wrote {out / (name + '.onnx')} ({len(data):,} bytes)")
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        manifest["synthetic_models"] = [describe(n, d) for n, d in built.items()]
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"updated {manifest_path} (synthetic_models)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
