"""The gate table builds the Gates thresholds, the CLI flags, the checks and the report rows;
verify and bench take typed option objects."""

from __future__ import annotations

import argparse
import math
import pickle

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcompress as oc
from onnxcompress.errors import ConfigError, DataError
from onnxcompress.evaluation.bench import BenchOptions
from onnxcompress.evaluation.gates import GATES, GateNotApplicableError, Gates, check_gates
from onnxcompress.evaluation.metrics import compare_outputs
from onnxcompress.evaluation.verify import VerifyOptions, verify


def test_gates_follow_the_table():
    names = [g.name for g in GATES]
    assert list(Gates().to_dict()) == names
    g = Gates(min_cosine=0.5, max_rel_error=None)
    assert g.min_cosine == 0.5 and g.max_rel_error is None and dict(g) == {"min_cosine": 0.5}
    assert g == Gates(min_cosine=0.5) and hash(g) == hash(Gates(min_cosine=0.5)) and g.any()
    assert not Gates().any()
    assert pickle.loads(pickle.dumps(g)) == g
    assert g.replace(min_cosine=None, max_accuracy_drop=1) == Gates(max_accuracy_drop=1.0)
    with pytest.raises(AttributeError):
        g.min_cosine = 0.1  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown gate 'min_cos'"):
        Gates(min_cos=0.5)
    with pytest.raises(ConfigError, match="min_cosine must be between -1 and 1"):
        Gates(min_cosine=2)
    assert oc.Gates is Gates


def test_flags_are_generated_from_the_table():
    from onnxcompress.commands.verify import add_gate_arguments, gates_from_args

    p = argparse.ArgumentParser()
    add_gate_arguments(p)
    flags = {opt for a in p._actions for opt in a.option_strings} - {"-h", "--help"}
    assert flags == {g.flag for g in GATES}
    args = p.parse_args(["--min-cosine", "0.9", "--max-rel-error", "0.1"])
    assert gates_from_args(args) == Gates(min_cosine=0.9, max_rel_error=0.1)
    with pytest.raises(SystemExit):
        p.parse_args(["--min-agreement", "1.5"])


def test_checks_and_rows_come_from_the_table():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 5)).astype(np.float32)
    labels = ref.argmax(1)
    metrics = compare_outputs(
        ref, ref + 0.5 * rng.standard_normal(ref.shape).astype(np.float32), labels, name="logits"
    )
    limits = {"max_accuracy_drop": 100.0, "min_agreement": 0.0, "min_cosine": -1.0, "max_rel_error": math.inf}
    outcomes = check_gates([metrics], Gates(**limits), has_labels=True)
    assert [o.gate for o in outcomes] == [g.name for g in GATES] and all(o.passed for o in outcomes)
    for o, spec in zip(outcomes, GATES, strict=True):
        assert o.metric == spec.metric and o.describe().startswith(f"{spec.flag} passed")
    scalar = compare_outputs(ref[:, :1], ref[:, :1], name="y")
    with pytest.raises(GateNotApplicableError, match="^min_agreement cannot be checked") as info:
        check_gates([scalar], Gates(min_agreement=0.5), has_labels=False)
    assert info.value.reason == "no-class-output" and isinstance(info.value, DataError)
    assert "--" not in str(info.value)  # the library names no flag; the CLI adds them


def _model() -> onnx.ModelProto:
    w = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_verify_takes_an_options_object():
    m = _model()
    opts = VerifyOptions(gates=Gates(min_cosine=0.999), samples=10, batch_size=5)
    a = verify(m, m, None, opts)
    b = oc.verify(m, m, gates=Gates(min_cosine=0.999), samples=10, batch_size=5)
    assert a.passed and b.passed and a.samples == b.samples == 10 and a.gate_config == b.gate_config
    ticks: list[int] = []
    verify(m, m, None, opts, progress=lambda task, done, total: ticks.append(done))
    assert ticks == [0, 5, 10]
    with pytest.raises(TypeError, match="options are"):
        verify(m, m, samplez=3)
    with pytest.raises(DataError, match="samples must be an integer >= 1"):
        VerifyOptions(samples=0)
    with pytest.raises(GateNotApplicableError, match="^max_accuracy_drop needs labels"):
        verify(m, m, gates=Gates(max_accuracy_drop=1.0))


def test_bench_options_validate_and_travel_as_json():
    opts = BenchOptions(runs=5, shapes={"x": (2, 8)}, int_range={"": (0, 3)}, providers=["cpu"])
    assert BenchOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ConfigError, match="need runs >= 1"):
        BenchOptions(runs=0)
    with pytest.raises(ConfigError, match="unknown optimization level"):
        BenchOptions(optimization_level="max")
    with pytest.raises(TypeError, match="options are"):
        oc.bench(["x.onnx"], runz=3)
