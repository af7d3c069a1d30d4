"""make_session: model forms, providers, errors, and the session options compressed models need."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.errors import ConfigError, ContainerError, InvalidModelError
from onnxcompress.sessions import (
    FOLDING_LIMIT_KEY,
    canonical_provider,
    make_session,
    parse_providers,
    providers_used,
    resolve_providers,
)


def _matmul_model(w: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _tile_model(n: int) -> onnx.ModelProto:
    """y = x + sum(tile(c)): the Tile output (n floats) is a constant ORT folds at load."""
    c = numpy_helper.from_array(np.ones(16, np.float32), "c")
    reps = numpy_helper.from_array(np.array([n // 16], np.int64), "reps")
    graph = helper.make_graph(
        [
            helper.make_node("Tile", ["c", "reps"], ["w"]),
            helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
            helper.make_node("Add", ["x", "s"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [c, reps],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


W = np.arange(12, dtype=np.float32).reshape(4, 3)
X = np.ones((2, 4), np.float32)


def test_model_forms_path_bytes_proto(tmp_path):
    model = _matmul_model(W)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for m in (path, str(path), model.SerializeToString(), model):
        sess = make_session(m)
        np.testing.assert_allclose(sess.run(None, {"x": X})[0], X @ W)
        assert providers_used(sess) == ["CPUExecutionProvider"]


def test_external_data_from_path_and_from_proto(tmp_path):
    model = _matmul_model(np.ones((64, 32), np.float32))
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    x = np.ones((1, 64), np.float32)
    assert make_session(path).run(None, {"x": x})[0][0, 0] == 64
    shallow = onnx.load(str(path), load_external_data=False)  # tensors still point at ext.onnx.data
    with pytest.raises(InvalidModelError, match="onnxruntime cannot load"):
        make_session(shallow)
    sess = make_session(shallow.SerializeToString(), external_data_dir=tmp_path)
    assert sess.run(None, {"x": x})[0][0, 0] == 64


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(InvalidModelError, match="no such file"):
        make_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(InvalidModelError) as info:
        make_session(bad)
    # the same message as every other entry point (model_io), not onnxruntime's INVALID_PROTOBUF
    assert "\n" not in str(info.value) and "bad.onnx" in str(info.value)
    assert "not an ONNX model" in str(info.value)
    with pytest.raises(InvalidModelError):
        make_session(b"\x00\x01garbage")


def test_container_paths_use_container_reader(tmp_path):
    path = tmp_path / "m.onnxc"
    path.write_bytes(b"not really a container")
    if importlib.util.find_spec("onnxcompress.container") is None:
        with pytest.raises(ContainerError, match="container"):
            make_session(path)
    else:  # the real reader must reject garbage with a clear error, not a traceback
        with pytest.raises((ContainerError, InvalidModelError)):
            make_session(path)


def test_containers_are_recognised_by_their_header_not_their_name(tmp_path):
    from onnxcompress.container import write_container

    model = _matmul_model(W)
    renamed = tmp_path / "packed.onnx"  # a container under an .onnx name
    write_container(model, renamed)
    np.testing.assert_allclose(make_session(renamed).run(None, {"x": X})[0], X @ W)
    plain = tmp_path / "plain.onnxc"  # a plain model under an .onnxc name
    onnx.save(model, plain)
    np.testing.assert_allclose(make_session(plain).run(None, {"x": X})[0], X @ W)


def test_provider_names():
    assert canonical_provider("cpu") == "CPUExecutionProvider"
    assert canonical_provider("CUDA") == "CUDAExecutionProvider"
    assert canonical_provider("trt") == "TensorrtExecutionProvider"
    assert canonical_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    assert parse_providers(["cuda,cpu"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert parse_providers(None) is None
    with pytest.raises(ConfigError, match="unknown execution provider"):
        canonical_provider("warp-drive")


def test_unavailable_provider_is_a_clear_error_or_fallback():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDAExecutionProvider requested but not available"):
        resolve_providers(["cuda"])
    assert resolve_providers(["cuda"], allow_fallback=True) == ["CPUExecutionProvider"]
    sess = make_session(_matmul_model(W), providers=["cuda", "cpu"], allow_fallback=True)
    assert providers_used(sess) == ["CPUExecutionProvider"]


def test_bad_options():
    with pytest.raises(ConfigError, match="optimization level"):
        make_session(_matmul_model(W), optimization_level="turbo")
    with pytest.raises(ConfigError, match="threads"):
        make_session(_matmul_model(W), threads=0)
    sess = make_session(_matmul_model(W), threads=1, optimization_level="disable")
    np.testing.assert_allclose(sess.run(None, {"x": X})[0], X @ W)


def _folded(tmp_path, name: str, **kwargs) -> bool:
    out = tmp_path / name
    make_session(_tile_model(4096), optimized_model_path=out, optimization_level="basic", **kwargs)
    return [n.op_type for n in onnx.load(str(out)).graph.node] == ["Add"]


def test_folding_limit_key_is_honoured(tmp_path):
    """The key we set reaches ORT: a limit below the constant's size stops folding (16 KiB here)."""
    assert _folded(tmp_path, "default.onnx")
    assert not _folded(tmp_path, "tiny.onnx", folding_limit_bytes=1000)
    assert _folded(tmp_path, "raw.onnx", folding_limit_bytes=None, config={FOLDING_LIMIT_KEY: "100000"})
