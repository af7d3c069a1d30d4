"""resident_bytes: the RAM estimate the search's ``ram`` objective minimises, on hand-built models."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.compressor import compress_model
from onnxcompress.config import CompressionConfig
from onnxcompress.resident import resident_bytes, tensor_bytes


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N,64] -> MatMul(w1[64,32]) -> Add(b1) -> Relu -> Gemm(w2[16,32], transB) -> y[N,16]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 32)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((16, 32)) * 0.2).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


DENSE = (64 * 32 + 32 + 16 * 32) * 4  # every initializer of _mlp as float32


def _compressed(override: dict) -> onnx.ModelProto:
    config = dataclasses.replace(CompressionConfig(min_elements=256), names={"b1": None, "w1": override, "w2": override})
    return compress_model(_mlp(), config, keep_decoded=False).model


def test_an_uncompressed_model_counts_its_initializers() -> None:
    assert resident_bytes(_mlp()) == DENSE


def test_a_codebook_weight_counts_the_dense_tensor_it_decodes_to() -> None:
    model = _compressed({"bits": 3, "sparsity": 0.5})
    assert any(n.domain == "ai.onnxcompress" for n in model.graph.node)  # decoded by a function
    stored = sum(len(t.raw_data) for t in model.graph.initializer)
    assert stored < DENSE / 4  # small on disk ...
    assert resident_bytes(model) == DENSE  # ... dense in memory once folded


def test_a_matmulnbits_weight_counts_its_packed_codes_and_scales() -> None:
    model = _compressed({"format": "runtime", "bits": 4, "block_size": 16})
    kept = {i for n in model.graph.node if n.op_type == "MatMulNBits" for i in n.input[1:] if i}
    assert len([n for n in model.graph.node if n.op_type == "MatMulNBits"]) == 2
    packed = sum(tensor_bytes(t.data_type, int(np.prod(t.dims))) for t in model.graph.initializer if t.name in kept)
    # 4-bit codes: 64*32/2 + 16*32/2 bytes, one float scale per 16 values
    assert packed == (64 * 32 + 16 * 32) // 2 + (64 * 32 + 16 * 32) // 16 * 4
    assert resident_bytes(model) == packed + 32 * 4  # plus the float bias


def test_a_fold_chain_counts_its_dense_output_and_a_quantized_op_is_never_folded() -> None:
    """Cast -> Mul rebuilt from int8 codes counts the float tensor; MatMulNBits fed only by
    constants still keeps its codes; a value whose shape inference cannot tell counts its sources."""
    codes = numpy_helper.from_array(np.ones((8, 128), np.int8), "codes")
    scale = numpy_helper.from_array(np.array(0.5, np.float32), "scale")
    b = numpy_helper.from_array(np.zeros((4, 1, 16), np.uint8), "B")
    s = numpy_helper.from_array(np.ones(4, np.float32), "S")
    a = numpy_helper.from_array(np.ones((1, 16), np.float32), "A")
    opaque = numpy_helper.from_array(np.ones(100, np.float32), "opaque_in")
    nodes = [
        helper.make_node("Cast", ["codes"], ["codes_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["codes_f", "scale"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("MatMulNBits", ["A", "B", "S"], ["z"], domain="com.microsoft", K=16, N=4, bits=4, block_size=16),
        helper.make_node("Decode", ["opaque_in"], ["opaque"], domain="example.unknown"),
        helper.make_node("Add", ["x", "opaque"], ["x2"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, None)],
        [codes, scale, b, s, a, opaque],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1),
                              helper.make_opsetid("example.unknown", 1)],
    )  # fmt: skip
    folded_w = 8 * 128 * 4  # the float weight, not the int8 codes (1,024 B) and the scale
    kept = 4 * 16 + 4 * 4 + 16 * 4  # B, S and A stay as stored
    assert resident_bytes(model) == folded_w + kept + 100 * 4


def test_tensor_bytes_packs_4_bit_types() -> None:
    assert tensor_bytes(TensorProto.UINT4, 5) == 3
    assert tensor_bytes(TensorProto.FLOAT16, 5) == 10
