"""The method table: one row per technique, read by the CLI, plan validation, compression and
calibration; typed pass results; the progress callback."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress import methods
from onnxcompress.algorithms import codebook
from onnxcompress.compressor import compress_model
from onnxcompress.config import CHOICES, WeightConfig, from_dict
from onnxcompress.errors import ConfigError, EncodingError
from onnxcompress.methods import METHODS, Method
from onnxcompress.passes.base import Pass, PassManager, PassResult
from onnxcompress.passes.check import CheckModelPass, CheckResult
from onnxcompress.sessions import make_session


def mlp(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((32, 64)).astype(np.float32)
    w2 = rng.standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_table_is_what_the_cli_and_the_plan_accept():
    from onnxcompress.cli import build_parser

    parser = build_parser()
    compress = parser._subparsers._group_actions[0].choices["compress"]  # type: ignore[union-attr]
    method_flag = next(a for a in compress._actions if a.dest == "method")
    assert tuple(method_flag.choices) == tuple(METHODS) == CHOICES["method"]
    for name, method in METHODS.items():
        assert method.name == name and method.fields
        cfg = WeightConfig(method=name, sparsity=0.5)
        assert cfg.quantizes is method.quantizes
    with pytest.raises(ConfigError, match="method must be one of kmeans, clipq, prune"):
        WeightConfig(method="nope")
    with pytest.raises(ConfigError, match="needs pruning"):
        WeightConfig(method="prune")
    # every field a method says it reads is a WeightConfig field
    fields = {f.name for f in dataclasses.fields(WeightConfig)}
    assert all(set(m.fields) <= fields for m in METHODS.values())


def test_plain_methods_decode_to_what_compress_model_reports():
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    for name in METHODS:
        model = mlp()
        result = compress_model(model, from_dict({"weight": {"method": name, "sparsity": 0.5, "bits": 4}}))
        for row in result.report.weights:
            assert row.setting.startswith(name)
        # the model's own decode gives the arrays compress_model says the weights decode to
        ref = x @ result.decoded["w1"] @ result.decoded["w2"]
        got = make_session(result.model).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_a_new_method_is_one_table_row(monkeypatch):
    """A method registered in the table (here: 2-bit k-means with no pruning, whatever the plan
    says) is accepted by the plan, used by compress_model and left to the plain path by calibration."""

    def compress(w, info, cfg, ctx):
        return codebook.quantize(w, bits=2, granularity="tensor", axis=0, seed=ctx.seed)

    row = Method("twobit", "2-bit", "2-bit k-means, no pruning", compress, fields=("encoding",))
    monkeypatch.setitem(METHODS, "twobit", row)
    result = compress_model(mlp(), from_dict({"weight": {"method": "twobit"}}))
    assert {w.bits for w in result.report.weights} == {2}
    assert all(len(np.unique(d)) <= 4 for d in result.decoded.values())

    from onnxcompress.calibration import calibrate

    data = {"x": np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32)}
    cal = calibrate(mlp(), data, from_dict({"weight": {"method": "twobit"}}), baseline=False)
    assert cal.skipped["w1"] == "2-bit has no calibrated variant (plain algorithm used)"
    assert not cal.weights


def test_compress_and_encode_are_the_shared_steps():
    from onnxcompress.inventory import build_inventory

    info = next(i for i in build_inventory(mlp()).weights if i.name == "w1")
    w = np.random.default_rng(3).standard_normal(info.shape).astype(np.float32)
    cfg = WeightConfig(method="prune", sparsity=0.75)
    c = methods.compress(w, info, cfg)
    assert isinstance(c, methods.Pruned)
    dec = methods.decompress(c)
    assert np.mean(dec == 0) == pytest.approx(0.75, abs=0.01)
    enc = methods.encode("w1", c, encoding=cfg.encoding, gap_bits=None)
    assert enc.bits is None and enc.nbytes < dec.nbytes


def test_pass_results_are_typed():
    model = mlp()
    result = CheckModelPass()(model)
    assert isinstance(result, CheckResult) and result.deferred is None
    assert result.to_dict() == {"full_check": True}
    out = compress_model(mlp())
    assert out.report.passes["check"] == {"full_check": True}
    assert any(isinstance(r, CheckResult) for r in out.passes)


def test_pass_manager_names_the_failing_pass():
    class Returns(Pass):
        name = "returns-none"

        def call(self, model):
            return None

    class Breaks(Pass):
        name = "breaks"

        def call(self, model):
            raise EncodingError("cannot")

    class Keeps(Pass):
        name = "keeps"

        def call(self, model):
            return PassResult(model, False)

    with pytest.raises(TypeError, match="returns-none returned NoneType"):
        PassManager([Returns()])(mlp())
    with pytest.raises(EncodingError, match="^breaks: cannot") as info:
        PassManager([Keeps(), Breaks(), Keeps()])(mlp())
    assert info.value.failed_pass == "breaks" and info.value.ran_before == ("keeps",)


def test_progress_is_a_callback():
    calls: list[tuple[str, int, int]] = []
    compress_model(mlp(), progress=lambda task, done, total: calls.append((task, done, total)))
    assert calls[0] == ("compressing weights", 0, 2) and calls[-1] == ("compressing weights", 2, 2)
