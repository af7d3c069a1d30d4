"""Runtime-native weights: rewrite each chosen weight's consumers to operators that onnxruntime
executes on the quantized codes directly (``format: runtime``).

Measured on CPU with onnxruntime 1.32 (``benchmarks/runtime.py --probe``, ``docs/format.md``
"Runtime-native weights"): these stay quantized in the session and shrink RAM and latency, where
the folded codebook format (``format: codebook``) is decoded to dense float at session creation.

==============  =====================================================================================
consumer        rewrite
==============  =====================================================================================
``MatMul`` B    ``com.microsoft.MatMulNBits`` (2/4/8 bits, blocks along K, ``accuracy_level`` from
                the plan, default 4): stays quantized in the session
``Gemm`` B      ``MatMulNBits`` (``transA`` -> ``Transpose``; ``alpha`` -> ``Mul``; ``C`` ->
                ``Add``; ``transB`` picks the code layout), the case onnxruntime's quantizer skips
``Gather`` data  ``com.microsoft.GatherBlockQuantized`` (blocks along the embedding dimension):
                stays quantized
anything else   ``Cast -> Sub -> Mul`` per output channel (``fold``), writing the weight's name:
                ``Conv``, tied weights, subgraph uses. onnxruntime folds it once at load
                (dense in RAM, fp32 speed); ``DequantizeLinear`` here measured x14-x25 slower
==============  =====================================================================================

With ``activations: int8`` (opt-in, 8-bit, float32 weights) the weight becomes int8 codes with one
scale per output channel, computed with dynamic activation quantization in standard ONNX ops:

==============  =====================================================================================
``MatMul`` B    ``DynamicQuantizeLinear(A) -> MatMulInteger(A_q, W_q, A_zp) -> Cast -> Mul(A_s * s)``
                (``matmul_int8``): onnxruntime fuses it into ``DynamicQuantizeMatMul`` (measured:
                the fused op is all that remains of it in the optimized graph)
``Gemm`` B      the same, with ``transA``/``alpha``/``C`` as for MatMulNBits (``gemm_int8``)
``Conv`` W      ``DynamicQuantizeLinear(X) -> ConvInteger(X_q, W_q, X_zp) -> Cast -> Mul(X_s * s)
                [-> Add(bias)]`` (``conv_int8``): stays quantized, but onnxruntime 1.32's CPU
                ``ConvInteger`` is 8-20x slower than its float Conv (benchmarks/runtime.py);
                ``op_types: {Conv: {activations: float}}`` keeps convolutions on ``fold``
==============  =====================================================================================

Other consumers of such a weight (``Gather``, tied weights) take the float rewrites above. The int8
codes are the symmetric 8-bit codes minus 128 (``W_q = q - 128``, ``W = W_q * s``): pruned weights
are exactly 0.

Codes come from :mod:`onnxcompress.algorithms.affine`; what a weight decodes to in numpy
(:func:`quantize`'s second result) is what onnxruntime computes with. Quantized tensors go to the
main graph's initializers (visible from every subgraph); a weight held in a ``Constant`` node is
removed from wherever it lived and its consumers are rewritten in their own graph. Opset: the
``com.microsoft`` ops need only the ``com.microsoft`` import, and the ``fold`` nodes work from
opset 11 (4/2-bit codes: ``UINT4`` from opset 21, below it two per uint8 byte unpacked with
``BitShift``): no opset is raised.
This module never imports onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcompress.algorithms import affine
from onnxcompress.errors import ConfigError, EncodingError
from onnxcompress.inventory import WeightInfo, fresh_name, graph_names, iter_graphs
from onnxcompress.passes.base import Pass, PassResult
from onnxcompress.passes.encode_weights import remove_tensors
from onnxcompress.passes.versions import default_opset

MS_DOMAIN = "com.microsoft"
PREFIX = "onnxcompress/rt"
KINDS = ("matmul", "gemm", "gather", "fold", "matmul_int8", "gemm_int8", "conv_int8")
INT8_KINDS = ("matmul_int8", "gemm_int8", "conv_int8")
ACTIVATIONS = ("float", "int8")


@dataclass(frozen=True)
class RuntimeSpec:
    """How a runtime-native weight is quantized. ``bits`` 2, 4 or 8 (what onnxruntime's CPU
    kernels implement); ``block_size`` along the reduction axis (power of 2, >= 16);
    ``accuracy_level`` is the MatMulNBits attribute: 4 lets the kernel quantize the activations to
    int8 (its fast path: below 4 the 8-bit kernel measured 16-20x slower than an fp32 MatMul, ORT
    1.32 CPU, batch 1), 1 computes in fp32, which keeps more accuracy (MiniLM-L6 8-bit,
    benchmarks/runtime.py: nearest-neighbour agreement 0.988 at level 1 against 0.970 at level 4,
    test sentences); 0 leaves the choice to onnxruntime, 2/3 ask for fp16/bf16. Only MatMulNBits nodes carry it."""

    bits: int = 8
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    activations: str = "float"  # "int8": MatMulInteger/ConvInteger with dynamic activation quantization
    per_channel: bool = True  # activations int8: one scale per output channel, else one per tensor

    def __post_init__(self) -> None:
        if self.bits not in (2, 4, 8):
            raise ConfigError(
                f"format: runtime needs bits 2, 4 or 8 (onnxruntime's kernels), got {self.bits}; "
                "use format: codebook for other widths"
            )
        if self.activations not in ACTIVATIONS:
            raise ConfigError(
                f"activations must be one of {', '.join(ACTIVATIONS)}, got {self.activations!r}"
            )
        if self.activations == "int8" and (self.bits != 8 or not self.symmetric):
            raise ConfigError(
                f"activations int8 needs symmetric 8-bit weights (MatMulInteger/ConvInteger), got bits {self.bits}"
            )
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of 2 and at least 16, got {self.block_size}")
        level = self.accuracy_level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 4:
            raise ConfigError(f"accuracy_level must be an integer from 0 to 4, got {self.accuracy_level!r}")


@dataclass
class RuntimeWeight:
    """One weight's runtime-native form: its codes in ``rows = moveaxis(w, axis, 0)`` layout."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    axis: int
    codes: affine.AffineCodes
    accuracy_level: int = 4
    opset: int = 21  # the model's default opset (how ``fold`` stores 4-bit codes)

    @property
    def nbytes(self) -> int:
        """Bytes stored: packed codes, scales and zero points (``fold``: one byte per 8-bit code,
        two 4/2-bit codes per byte; one scale and zero point per output channel)."""
        c = self.codes
        scale_bytes = c.scales.size * np.dtype(self.dtype).itemsize
        if self.kind in INT8_KINDS:
            return int(np.prod(self.shape)) + _int8_scales(self).nbytes
        if self.kind == "fold":
            store = 8 if c.bits == 8 else 4
            return -(-int(np.prod(self.shape)) * store // 8) + 2 * scale_bytes
        cols = c.cols if self.kind == "gather" else c.codes.shape[1]
        zp = 0 if c.zero_points is None else c.rows * -(-c.blocks * c.bits // 8)
        return c.rows * -(-cols * c.bits // 8) + scale_bytes + zp


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return a.f if a.type == onnx.AttributeProto.FLOAT else a.i
    return default


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Every node (any graph) that reads each tensor name."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for _, g in iter_graphs(model.graph):
        for n in g.node:
            for name in n.input:
                if name:
                    out.setdefault(name, []).append(n)
    return out


def choose_kind(info: WeightInfo, nodes: Sequence[onnx.NodeProto], spec: RuntimeSpec, opset: int = 21) -> str:
    """Which rewrite a weight gets (see the module tables); ``fold`` for everything else.

    ``activations: int8`` applies to float32 weights only (``DynamicQuantizeLinear`` reads float32)
    in models of opset 11 or newer (``MatMulInteger``/``ConvInteger``/``DynamicQuantizeLinear``);
    ``opset`` is the model's default opset."""
    if not nodes:
        return "fold"
    uses = {(n.op_type, n.domain, tuple(i for i, x in enumerate(n.input) if x == info.name)) for n in nodes}
    if spec.activations == "int8" and info.dtype == "float32" and opset >= 11:
        only = {(op, idx) for op, dom, idx in uses if dom in ("", "ai.onnx")}
        if len(only) == 1 and len(uses) == 1:
            ((op, idx),) = only
            if op == "MatMul" and idx == (1,) and len(info.shape) == 2:
                return "matmul_int8"
            if op == "Gemm" and idx == (1,) and len({int(_attr(n, "transB", 0)) for n in nodes}) == 1:
                return "gemm_int8"
            if op == "Conv" and idx == (1,):
                return "conv_int8"
    if len(info.shape) != 2:
        return "fold"
    if all(op == "MatMul" and dom in ("", "ai.onnx") and idx == (1,) for op, dom, idx in uses):
        return "matmul"
    if all(op == "Gemm" and dom in ("", "ai.onnx") and idx == (1,) for op, dom, idx in uses):
        trans = {int(_attr(n, "transB", 0)) for n in nodes}
        if len(trans) == 1:
            return "gemm"
    if all(op == "Gather" and dom in ("", "ai.onnx") and idx == (0,) for op, dom, idx in uses):
        if all(int(_attr(n, "axis", 0)) == 0 for n in nodes) and info.shape[1] % 16 == 0:
            return "gather"
    return "fold"


def layout_axis(kind: str, info: WeightInfo, nodes: Sequence[onnx.NodeProto]) -> int:
    """The axis whose entries become code rows (the output channels; the others are reduced)."""
    if kind in ("matmul", "matmul_int8"):
        return 1
    if kind in ("gemm", "gemm_int8"):
        return 0 if int(_attr(nodes[0], "transB", 0)) else 1
    if kind in ("gather", "conv_int8"):
        return 0
    return info.axis


def quantize(
    w: np.ndarray, info: WeightInfo, kind: str, spec: RuntimeSpec, *, axis: int,
    mask: np.ndarray | None = None, hessian: np.ndarray | None = None,
) -> tuple[RuntimeWeight, np.ndarray]:  # fmt: skip
    """Codes for one weight and the exact array onnxruntime will compute with (original shape)."""
    moved = np.moveaxis(w, axis, 0)
    w2 = moved.reshape(moved.shape[0], -1).astype(np.float32)
    m2 = None if mask is None else np.moveaxis(mask, axis, 0).reshape(w2.shape)
    if kind == "fold" or kind in INT8_KINDS:
        # one scale per output channel (a block covering the whole row): the fold is one broadcast,
        # MatMulInteger/ConvInteger one scale per output column
        block = 1 << max(4, int(np.ceil(np.log2(max(w2.shape[1], 1)))))
        if kind in INT8_KINDS and not spec.per_channel:
            codes = _per_tensor(w2, spec, m2)
        elif hessian is not None and kind in ("matmul_int8", "gemm_int8"):
            codes = affine.gptq(
                w2, hessian, bits=spec.bits, block_size=block, symmetric=spec.symmetric, mask=m2
            )
        else:
            codes = affine.compress(w2, bits=spec.bits, block_size=block, symmetric=spec.symmetric, mask=m2)
    elif kind == "gather":
        block = spec.block_size
        while w2.shape[1] % block:
            block //= 2
        codes = affine.compress(w2, bits=spec.bits, block_size=block, symmetric=spec.symmetric, mask=m2)
    elif hessian is not None:
        codes = affine.gptq(
            w2, hessian, bits=spec.bits, block_size=spec.block_size, symmetric=spec.symmetric, mask=m2
        )
    else:
        codes = affine.compress(
            w2, bits=spec.bits, block_size=spec.block_size, symmetric=spec.symmetric, mask=m2
        )
    dec2 = affine.decompress(codes)
    dec = np.moveaxis(dec2.reshape(moved.shape), 0, axis).astype(w.dtype)
    rw = RuntimeWeight(
        name=info.name, kind=kind, shape=tuple(int(d) for d in w.shape), dtype=str(w.dtype), axis=axis,
        codes=codes, accuracy_level=spec.accuracy_level,
    )  # fmt: skip
    return rw, dec


def _per_tensor(w2: np.ndarray, spec: RuntimeSpec, mask: np.ndarray | None) -> affine.AffineCodes:
    """One scale for the whole weight (chosen like every affine scale: clipping search and least
    squares), laid out as one block per row with that same scale. Why: onnxruntime's fused
    ``DynamicQuantizeMatMul`` is 10-45% slower with a scale per column (measured, ORT 1.32 CPU), and
    a scalar scale is what its own quantize_dynamic writes."""
    rows, cols = w2.shape
    block = 1 << max(4, int(np.ceil(np.log2(max(rows * cols, 1)))))
    flat_mask = None if mask is None else mask.reshape(1, -1)
    one = affine.compress(w2.reshape(1, -1), bits=spec.bits, block_size=block, symmetric=True, mask=flat_mask)
    row_block = 1 << max(4, int(np.ceil(np.log2(max(cols, 1)))))
    codes = np.full((rows, row_block), 1 << (spec.bits - 1), dtype=np.uint8)
    codes[:, :cols] = one.codes[0, : rows * cols].reshape(rows, cols)
    scales = np.full((rows, 1), one.scales[0, 0], dtype=np.float32)
    return affine.AffineCodes(codes, scales, None, spec.bits, row_block, cols)


def decoded(rw: RuntimeWeight) -> np.ndarray:
    """The exact array ``rw`` stands for (original shape and dtype): what onnxruntime computes with."""
    c = rw.codes
    moved_shape = (c.rows, *[d for i, d in enumerate(rw.shape) if i != rw.axis])
    return np.moveaxis(affine.decompress(c).reshape(moved_shape), 0, rw.axis).astype(np.dtype(rw.dtype))


class RuntimeNativePass(Pass):
    """Replace each :class:`RuntimeWeight` and rewrite its consumers (module docstring)."""

    name = "runtime-native"

    def __init__(self, weights: Sequence[RuntimeWeight]) -> None:
        self.weights = list(weights)

    def call(self, model: onnx.ModelProto) -> PassResult:
        details: dict[str, object] = {"weights": len(self.weights)}
        opset = default_opset(model)
        wanted = {rw.name for rw in self.weights}
        found = remove_tensors(model, wanted)
        if found != wanted:
            raise EncodingError(f"weights not found in the model: {sorted(wanted - found)[:5]}")
        users = consumers(model)
        taken = graph_names(model)

        def fresh(base: str) -> str:
            return fresh_name(base, taken)

        graph = model.graph

        def const(arr: np.ndarray, base: str) -> str:
            t = numpy_helper.from_array(arr, fresh(base))
            graph.initializer.append(t)
            return t.name

        top: list[onnx.NodeProto] = []
        # consumer node (keyed by its outputs: protobuf wrappers have no stable id) -> replacement nodes
        replaced: dict[tuple[str, ...], list[onnx.NodeProto]] = {}
        counts: dict[str, int] = {}
        for rw in self.weights:
            counts[rw.kind] = counts.get(rw.kind, 0) + 1
            base = f"{PREFIX}/{rw.name}"
            if rw.kind == "fold":
                top.extend(_fold_nodes(rw, graph, opset, const, fresh, base))
                continue
            if rw.kind in INT8_KINDS:
                q8 = const(int8_codes(rw), f"{base}/int8")
                s8 = const(_int8_scales(rw), f"{base}/scale")
                for node in users.get(rw.name, []):
                    replaced[tuple(node.output)] = _int8_nodes(rw, node, q8, s8, const, fresh)
                continue
            inputs = _packed_inputs(rw, const, base)
            for node in users.get(rw.name, []):
                if rw.kind == "gather":
                    replaced[tuple(node.output)] = [_gather_node(rw, node, inputs, fresh)]
                else:
                    replaced[tuple(node.output)] = _matmul_nodes(rw, node, inputs, const, fresh)
        for _, g in iter_graphs(graph):
            if not any(tuple(n.output) in replaced for n in g.node):
                continue
            nodes: list[onnx.NodeProto] = []
            for n in g.node:
                nodes.extend(replaced.get(tuple(n.output), [n]))
            del g.node[:]
            g.node.extend(nodes)
        if top:
            existing = list(graph.node)
            del graph.node[:]
            graph.node.extend(top + existing)
        if any(rw.kind not in ("fold", *INT8_KINDS) for rw in self.weights) and not any(
            imp.domain == MS_DOMAIN for imp in model.opset_import
        ):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        details["kinds"] = counts
        return PassResult(model, bool(self.weights), details)


def _scales(rw: RuntimeWeight) -> np.ndarray:
    return rw.codes.scales.astype(np.dtype(rw.dtype))


def _packed_inputs(rw: RuntimeWeight, const, base: str) -> dict[str, str]:
    c = rw.codes
    if rw.kind == "gather":
        data = affine.pack_rows(c.codes[:, : c.cols], c.bits)
        out = {"data": const(data, f"{base}/data"), "scales": const(_scales(rw), f"{base}/scales")}
        if c.zero_points is not None:
            out["zero_points"] = const(affine.pack_rows(c.zero_points, c.bits), f"{base}/zero_points")
        return out
    blob = c.block_size * c.bits // 8
    b = affine.pack_rows(c.codes, c.bits).reshape(c.rows, c.blocks, blob)
    out = {"B": const(b, f"{base}/B"), "scales": const(_scales(rw).reshape(-1), f"{base}/scales")}
    if c.zero_points is not None:
        out["zero_points"] = const(affine.pack_rows(c.zero_points, c.bits).reshape(-1), f"{base}/zero_points")
    return out


def int8_codes(rw: RuntimeWeight) -> np.ndarray:
    """The int8 weight an ``activations: int8`` rewrite stores: symmetric codes minus 128, as
    ``[K, N]`` for MatMulInteger (``matmul_int8``/``gemm_int8``) or in the Conv weight's own shape
    (``conv_int8``). ``int8_codes(rw) * scale`` (per output channel) is the decoded weight exactly."""
    c = rw.codes
    q = (c.codes[:, : c.cols].astype(np.int16) - 128).astype(np.int8)
    if rw.kind == "conv_int8":
        return np.ascontiguousarray(q.reshape(rw.shape))
    return np.ascontiguousarray(q.T)


def _int8_scales(rw: RuntimeWeight) -> np.ndarray:
    """One float32 scale per output channel, shaped to broadcast over the integer op's output
    (``[N]``; ``[1, C, 1, ...]`` for Conv), or a scalar when they are all equal (per tensor)."""
    s = rw.codes.scales[:, 0].astype(np.float32)
    if np.all(s == s[0]):  # per-tensor: a scalar (onnxruntime's fastest fused path)
        return np.array(s[0], dtype=np.float32)
    return s.reshape(1, -1, *[1] * (len(rw.shape) - 2)) if rw.kind == "conv_int8" else s


def _int8_nodes(
    rw: RuntimeWeight, node: onnx.NodeProto, q8: str, s8: str, const, fresh
) -> list[onnx.NodeProto]:
    """``DynamicQuantizeLinear -> MatMulInteger | ConvInteger -> Cast -> Mul(x_scale * w_scale)``
    for one consumer (the pattern onnxruntime's quantize_dynamic writes and fuses), then the
    consumer's own extras: Gemm's ``transA``/``alpha``/``C`` (as :func:`_matmul_nodes`), Conv's bias."""
    label = node.name or f"{rw.name}/{node.op_type}"
    nodes: list[onnx.NodeProto] = []
    a = node.input[0]
    if node.op_type == "Gemm" and int(_attr(node, "transA", 0)):
        t = fresh(f"{label}/A_T")
        nodes.append(helper.make_node("Transpose", [a], [t], perm=[1, 0], name=fresh(f"{label}/Transpose")))
        a = t
    aq, a_s, a_z = fresh(f"{label}/x_q"), fresh(f"{label}/x_scale"), fresh(f"{label}/x_zero_point")
    acc, accf, sc = fresh(f"{label}/acc"), fresh(f"{label}/acc_float"), fresh(f"{label}/out_scale")
    nodes.append(
        helper.make_node("DynamicQuantizeLinear", [a], [aq, a_s, a_z], name=fresh(f"{label}/QuantizeX"))
    )
    if node.op_type == "Conv":
        conv = helper.make_node("ConvInteger", [aq, q8, a_z], [acc], name=fresh(label))
        conv.attribute.extend(node.attribute)  # ConvInteger has Conv's attributes
        nodes.append(conv)
    else:
        nodes.append(helper.make_node("MatMulInteger", [aq, q8, a_z], [acc], name=fresh(label)))
    nodes += [
        helper.make_node("Cast", [acc], [accf], to=onnx.TensorProto.FLOAT, name=fresh(f"{label}/Cast")),
        helper.make_node("Mul", [a_s, s8], [sc], name=fresh(f"{label}/OutScale")),
    ]
    y = node.output[0]
    bias = node.input[2] if node.op_type == "Conv" and len(node.input) > 2 and node.input[2] else ""
    is_gemm = node.op_type == "Gemm"
    alpha = float(_attr(node, "alpha", 1.0)) if is_gemm else 1.0
    beta = float(_attr(node, "beta", 1.0)) if is_gemm else 1.0
    has_c = is_gemm and len(node.input) > 2 and bool(node.input[2])
    plain = not bias and alpha == 1.0 and not has_c
    cur = y if plain else fresh(f"{label}/scaled")
    nodes.append(helper.make_node("Mul", [accf, sc], [cur], name=fresh(f"{label}/Dequantize")))
    if bias:
        shape = const(np.array([1, -1, *[1] * (len(rw.shape) - 2)], np.int64), f"{label}/bias_shape")
        b = fresh(f"{label}/bias")
        nodes.append(helper.make_node("Reshape", [bias, shape], [b], name=fresh(f"{label}/BiasShape")))
        nodes.append(helper.make_node("Add", [cur, b], [y], name=fresh(f"{label}/Bias")))
    elif not plain:
        nodes += _gemm_tail(label, cur, y, alpha, beta, node.input[2] if has_c else "", np.dtype(np.float32),
                            const, fresh)  # fmt: skip
    return nodes


def _gather_node(rw: RuntimeWeight, node: onnx.NodeProto, inputs: dict[str, str], fresh) -> onnx.NodeProto:
    c = rw.codes
    ins = [inputs["data"], node.input[1], inputs["scales"]]
    if "zero_points" in inputs:
        ins.append(inputs["zero_points"])
    elif c.bits == 8:
        pass  # uint8 data without zero points: the default is 2^(bits-1), our symmetric zero point
    return helper.make_node(
        "GatherBlockQuantized", ins, list(node.output), name=fresh(node.name or f"{rw.name}/Gather"),
        domain=MS_DOMAIN, bits=c.bits, block_size=c.block_size, gather_axis=0, quantize_axis=1,
    )  # fmt: skip


def _matmul_nodes(
    rw: RuntimeWeight, node: onnx.NodeProto, inputs: dict[str, str], const, fresh
) -> list[onnx.NodeProto]:
    c = rw.codes
    a = node.input[0]
    nodes: list[onnx.NodeProto] = []
    label = node.name or f"{rw.name}/{node.op_type}"
    if node.op_type == "Gemm" and int(_attr(node, "transA", 0)):
        t = fresh(f"{label}/A_T")
        nodes.append(helper.make_node("Transpose", [a], [t], perm=[1, 0], name=fresh(f"{label}/Transpose")))
        a = t
    alpha = float(_attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
    beta = float(_attr(node, "beta", 1.0)) if node.op_type == "Gemm" else 1.0
    has_c = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])
    y = node.output[0]
    mm_out = y if (alpha == 1.0 and not has_c) else fresh(f"{label}/matmul")
    ins = [a, inputs["B"], inputs["scales"]]
    if "zero_points" in inputs:
        ins.append(inputs["zero_points"])
    nodes.append(
        helper.make_node(
            "MatMulNBits", ins, [mm_out], name=fresh(label), domain=MS_DOMAIN, K=c.cols, N=c.rows,
            bits=c.bits, block_size=c.block_size, accuracy_level=rw.accuracy_level,
        )
    )  # fmt: skip
    if mm_out != y:
        nodes += _gemm_tail(label, mm_out, y, alpha, beta, node.input[2] if has_c else "", np.dtype(rw.dtype),
                            const, fresh)  # fmt: skip
    return nodes


def _gemm_tail(
    label: str, cur: str, y: str, alpha: float, beta: float, c_in: str, dt: np.dtype, const, fresh
) -> list[onnx.NodeProto]:
    """``y = alpha * cur + beta * C`` (Gemm's scaling and bias after its matrix product)."""
    nodes: list[onnx.NodeProto] = []
    if alpha != 1.0:
        nxt = y if not c_in else fresh(f"{label}/scaled")
        alpha_c = const(np.array(alpha, dt), f"{label}/alpha")
        nodes.append(helper.make_node("Mul", [cur, alpha_c], [nxt], name=fresh(f"{label}/Mul")))
        cur = nxt
    if c_in:
        if beta != 1.0:
            cb = fresh(f"{label}/beta_C")
            beta_c = const(np.array(beta, dt), f"{label}/beta")
            nodes.append(helper.make_node("Mul", [c_in, beta_c], [cb], name=fresh(f"{label}/MulC")))
            c_in = cb
        nodes.append(helper.make_node("Add", [cur, c_in], [y], name=fresh(f"{label}/Add")))
    return nodes


def _fold_nodes(
    rw: RuntimeWeight, graph: onnx.GraphProto, opset: int, const, fresh, base: str
) -> list[onnx.NodeProto]:
    """``Cast(codes) - zero_point) * scale`` in standard ops, writing the weight's name. Not
    ``DequantizeLinear``: onnxruntime never constant-folds that one (it keeps QDQ patterns), so a
    DequantizeLinear before Conv or Gather ran on every inference and blocked Conv's prepacked
    kernels (MobileNet-style CNN: p50 x14 to x25). These nodes fold once at load, exactly."""
    c = rw.codes
    moved_shape = (c.rows, *[d for i, d in enumerate(rw.shape) if i != rw.axis])
    codes = np.moveaxis(c.codes[:, : c.cols].reshape(moved_shape), 0, rw.axis)
    bshape = [1] * len(rw.shape)
    bshape[rw.axis] = c.rows
    dt = np.dtype(rw.dtype)
    scale = const(_scales(rw)[:, 0].reshape(bshape), f"{base}/scale")
    zp = const(c.zero_point_array()[:, 0].astype(dt).reshape(bshape), f"{base}/zero_point")
    nodes: list[onnx.NodeProto] = []
    if c.bits < 8 and opset >= 21:
        q = _uint4_const(graph, codes, fresh(f"{base}/codes"))  # Cast from uint4 needs opset 21
    elif c.bits < 8:
        q = _nibbles(codes, const, fresh, base, nodes)
    else:
        q = const(np.ascontiguousarray(codes), f"{base}/codes")
    qf, centred = fresh(f"{base}/codes_float"), fresh(f"{base}/centred")
    to = helper.np_dtype_to_tensor_dtype(dt)
    return nodes + [
        helper.make_node("Cast", [q], [qf], to=to, name=fresh(f"{base}/Cast")),
        helper.make_node("Sub", [qf, zp], [centred], name=fresh(f"{base}/Sub")),
        helper.make_node("Mul", [centred, scale], [rw.name], name=fresh(f"{base}/Mul")),
    ]


def _nibbles(codes: np.ndarray, const, fresh, base: str, nodes: list[onnx.NodeProto]) -> str:
    """4-bit (or 2-bit) codes below opset 21: two per byte (low nibble first), unpacked with
    ``BitShift`` (opset 11) and reshaped to the weight's shape; all constant, folded at load."""
    flat = np.asarray(codes, dtype=np.uint8).reshape(-1)
    n = flat.size
    pad = np.concatenate([flat, np.zeros(n % 2, np.uint8)])
    packed = const((pad[0::2] | (pad[1::2] << 4)).astype(np.uint8), f"{base}/codes")
    m = pad.size // 2
    four = const(np.array([4], np.uint8), f"{base}/four")
    hi, hi_up, lo = fresh(f"{base}/hi"), fresh(f"{base}/hi_up"), fresh(f"{base}/lo")
    lo2, hi2, pairs, out = (
        fresh(f"{base}/lo2"),
        fresh(f"{base}/hi2"),
        fresh(f"{base}/pairs"),
        fresh(f"{base}/codes_u8"),
    )
    col = const(np.array([m, 1], np.int64), f"{base}/col_shape")
    nodes += [
        helper.make_node("BitShift", [packed, four], [hi], direction="RIGHT", name=fresh(f"{base}/ShiftR")),
        # low nibble: shift left (uint8 drops the high bits) and back; Sub has no uint8 before opset 14
        helper.make_node("BitShift", [packed, four], [hi_up], direction="LEFT", name=fresh(f"{base}/ShiftL")),
        helper.make_node("BitShift", [hi_up, four], [lo], direction="RIGHT", name=fresh(f"{base}/Low")),
        helper.make_node("Reshape", [lo, col], [lo2], name=fresh(f"{base}/ReshapeLo")),
        helper.make_node("Reshape", [hi, col], [hi2], name=fresh(f"{base}/ReshapeHi")),
        helper.make_node("Concat", [lo2, hi2], [pairs], axis=1, name=fresh(f"{base}/Interleave")),
    ]
    src = pairs
    if n % 2:
        flat_name = fresh(f"{base}/flat")
        nodes.append(
            helper.make_node(
                "Reshape", [pairs, const(np.array([2 * m], np.int64), f"{base}/flat_shape")], [flat_name],
                name=fresh(f"{base}/Flatten"),
            )
        )  # fmt: skip
        src = fresh(f"{base}/trimmed")
        nodes.append(
            helper.make_node(
                "Slice", [flat_name, const(np.array([0], np.int64), f"{base}/start"),
                          const(np.array([n], np.int64), f"{base}/end")], [src], name=fresh(f"{base}/Trim"),
            )
        )  # fmt: skip
    shape = const(np.array(codes.shape, np.int64), f"{base}/shape")
    nodes.append(helper.make_node("Reshape", [src, shape], [out], name=fresh(f"{base}/Reshape")))
    return out


def _uint4_const(graph: onnx.GraphProto, a: np.ndarray, name: str) -> str:
    """A uint8 array of values < 16 as a UINT4 initializer (two per byte, low nibble first)."""
    flat = np.asarray(a, dtype=np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    t = graph.initializer.add()
    t.name = name
    t.data_type = onnx.TensorProto.UINT4
    t.dims.extend(a.shape)
    t.raw_data = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8).tobytes()
    return name


def quantize_planned(
    users: dict[str, list[onnx.NodeProto]], w: np.ndarray, info: WeightInfo, bits: int, block_size: int,
    mask: np.ndarray | None = None, *, activations: str = "float", opset: int = 21,
    hessian: np.ndarray | None = None, per_channel: bool = True, accuracy_level: int = 4,
) -> tuple[RuntimeWeight, np.ndarray]:  # fmt: skip
    """:func:`quantize` with the rewrite chosen from the weight's consumers (``users``:
    :func:`consumers` of the model): the one entry point the compressor calls. ``hessian``: the
    calibration Hessian of the weight's inputs (``[cols, cols]``, the layout of ``quantize``'s
    rows), for GPTQ error feedback where the rewrite is a MatMul/Gemm. ``per_channel`` (activations
    int8): False gives one scale per tensor. ``accuracy_level``: the MatMulNBits attribute
    (:class:`RuntimeSpec`); the other rewrites ignore it."""
    spec = RuntimeSpec(
        bits=bits, block_size=block_size, activations=activations, per_channel=per_channel,
        accuracy_level=accuracy_level,
    )  # fmt: skip
    nodes = users.get(info.name, [])
    kind = choose_kind(info, nodes, spec, opset)
    if hessian is not None and kind not in ("matmul", "gemm", "matmul_int8", "gemm_int8"):
        hessian = None
    rw, dec = quantize(w, info, kind, spec, axis=layout_axis(kind, info, nodes), mask=mask, hessian=hessian)
    rw.opset = opset
    return rw, dec
