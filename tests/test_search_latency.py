"""Issue 15: ``search --objective latency``, the batch latency of a stock onnxruntime session
predicted from a per-weight table timed on this machine (onnxcompress/search/latency.py).

Nothing here depends on how fast anything runs: the table test checks its keys, its sharing and its
cache with real but short timings (any positive number passes); the search tests inject a fixed
table, so which plan wins is decided by the numbers the test wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

optuna = pytest.importorskip("optuna")

import onnxcompress as oc  # noqa: E402
from onnxcompress.cli import main  # noqa: E402
from onnxcompress.errors import ConfigError, GateFailedError  # noqa: E402
from onnxcompress.evaluation.verify import Gates  # noqa: E402
from onnxcompress.search import latency as lat  # noqa: E402
from onnxcompress.search.candidates import Candidates  # noqa: E402
from onnxcompress.search.metrics import Metric  # noqa: E402
from onnxcompress.search.settings import SearchSettings  # noqa: E402
from onnxcompress.search.space import Choice, Plan, base_config, grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "lenet_300_100.onnx"
VAL = ROOT / "models" / "digits_val.npz"
GATES = oc.Gates(max_accuracy_drop=1.0)
QUICK = lat.Timing(warmup=1, rounds=2, runs=3, max_runs=3, min_round_s=0.0)
CHOICES = grid((0.0, 0.5), (4,), formats=("codebook", "runtime"), runtime_bits=(4, 8))


def twin_model() -> onnx.ModelProto:
    """y = x @ A + x @ B: two weights of the same shape behind the same kind of op."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["a"]),
        helper.make_node("MatMul", ["x", "B"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), n) for n in "AB"]
    return helper.make_model(helper.make_graph(nodes, "twin", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def twin_candidates() -> Candidates:
    data = {"x": np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)}
    return Candidates(
        twin_model(), data, base=base_config(), metric=Metric("cosine"), gates=Gates(min_cosine=0.9),
        container=False, objective="latency",
    )  # fmt: skip


def test_table_has_an_entry_per_weight_and_choice_shares_identical_ops_and_caches(tmp_path) -> None:
    cands = twin_candidates()
    cache = tmp_path / "t.latency.json"
    table = lat.measure_table(cands, CHOICES, batch=2, cache=cache, timing=QUICK)
    assert set(table.times) == {"A", "B"} and not table.unmeasured
    for name in "AB":  # keep and both codebook choices share the float entry
        assert set(table.times[name]) == {"float", "rt4", "rt8"}
        assert all(t > 0 for t in table.times[name].values())
        assert len(set(table.keys[name].values())) == 3
    assert table.base_ns > 0 and table.reference_ns == table.base_ns and table.batch == 2
    assert table.keys["A"] == table.keys["B"]  # same op, shapes and choice: one measurement
    assert table.times["A"] == table.times["B"]
    assert table.measured == 3 + 1  # A's three entries (B reuses them), then the whole model
    assert table.env["threads"] == 1 and table.env["onnxruntime"] and table.env["cpu"]
    stored = json.loads(cache.read_text())["entries"]
    assert len(stored) == 4 and all(e["ns"] > 0 for e in stored.values())

    def never(pairs, timing):  # a rerun on the same machine times nothing
        raise AssertionError("timed again although every entry was cached")

    again = lat.measure_table(cands, CHOICES, batch=2, cache=cache, timing=QUICK, timer=never)
    assert again.times == table.times and again.base_ns == table.base_ns and again.measured == 0
    assert again.fingerprint() == table.fingerprint()
    # another batch is another shape: new keys, timed afresh
    counted: list[int] = []

    def fake(pairs, timing):
        counted.append(len(pairs))
        return [1000 * (i + 1) for i in range(len(pairs))]

    other = lat.measure_table(cands, CHOICES, batch=4, cache=cache, timing=QUICK, timer=fake)
    assert counted == [3, 1] and other.keys["A"] != table.keys["A"]
    assert other.times["A"] == {"float": 1000, "rt4": 2000, "rt8": 3000} and other.base_ns == 1000


def test_a_runtime_choice_folded_back_to_float_gets_the_float_time_untimed() -> None:
    """A Conv weight in runtime format (no int8 activations) is a dequantize chain onnxruntime folds
    to dense float at load: the float kernel runs, so its entries are the float time, not a noisy
    second measurement of it."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"])], "conv", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": rng.standard_normal((4, 4, 8, 8)).astype(np.float32)}
    cands = Candidates(model, data, base=base_config(), metric=Metric("cosine"), gates=Gates(min_cosine=0.9),
                       container=False, objective="latency")  # fmt: skip
    timed: list[int] = []

    def fake(pairs, timing):
        timed.append(len(pairs))
        return [7_000] * len(pairs)

    table = lat.measure_table(cands, CHOICES, timer=fake)
    assert timed == [1, 1]  # the float micro-model, then the whole model
    assert table.times["W"] == {"float": 7_000, "rt4": 7_000, "rt8": 7_000}
    assert table.folded == {"W": ["rt4", "rt8"]}


def test_a_constant_node_weight_is_cut_out_and_a_subgraph_weight_is_left_at_float() -> None:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "Wv")
    inner = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "Wi")
    branch = helper.make_graph([helper.make_node("MatMul", ["c", "Wi"], ["yb"])], "b", [],
                               [helper.make_tensor_value_info("yb", TensorProto.FLOAT, None)], [inner])  # fmt: skip
    nodes = [
        helper.make_node("Constant", [], ["W"], value=w),
        helper.make_node("MatMul", ["x", "W"], ["c"]),
        helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["p"]),
        helper.make_node("If", ["p"], ["y"], then_branch=branch, else_branch=branch),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    graph = helper.make_graph(nodes, "const", [x], [y], [zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    cands = Candidates(model, data, base=base_config(), metric=Metric("cosine"), gates=Gates(min_cosine=0.9),
                       container=False, objective="latency")  # fmt: skip
    assert {layer.name for layer in cands.layers} == {"W", "Wi"}
    table = lat.measure_table(cands, CHOICES, timer=lambda pairs, timing: [9_000 - 1_000 * i for i in range(len(pairs))])
    assert table.times["W"] == {"float": 9_000, "rt4": 8_000, "rt8": 7_000}
    assert "subgraph" in table.unmeasured["Wi"] and "Wi" not in table.times
    assert table.predict(Plan({"W": Choice.runtime(4), "Wi": Choice.runtime(4)})) == 9_000 - 1_000


def test_predicted_latency_is_the_base_plus_each_weights_change() -> None:
    table = lat.LatencyTable(
        base_ns=100_000, reference_ns=100_000, batch=1, env={},
        times={"a": {"float": 10_000, "rt4": 4_000, "rt8": 6_000}, "b": {"float": 20_000, "rt4": 25_000},
               "c": {"float": 50_000, "rt4": 49_500}},
        unmeasured={"d": "read inside a subgraph (If/Loop/Scan body)"},
    )  # fmt: skip
    plan = Plan({"a": Choice.runtime(4), "b": Choice.runtime(4), "c": Choice.runtime(4), "d": Choice.runtime(4)})
    # a: -6,000; b: +5,000 (slower); c: -500 is 1% of its float time, under the noise floor; d: not measured
    assert table.predict(plan) == 100_000 - 6_000 + 5_000
    assert table.predict(Plan({"a": Choice(0.9, 3), "b": Choice.keep()})) == 100_000  # codebooks run as float
    assert table.predict(Plan({"a": Choice.runtime(8), "b": Choice.runtime(8)})) == 96_000  # b has no rt8 entry
    assert table.delta("a", Choice.runtime(8)) == -4_000 and lat.entry_of(Choice(0.5, 4)) == "float"


LENET = {
    "fc1.weight": {"float": 100_000, "rt4": 40_000, "rt8": 60_000},
    "fc2.weight": {"float": 30_000, "rt4": 20_000, "rt8": 25_000},
    "fc3.weight": {"float": 5_000, "rt4": 8_000, "rt8": 6_000},  # runtime is slower here: kept fp32
}
FASTEST = Plan({"fc1.weight": Choice.runtime(4), "fc2.weight": Choice.runtime(4), "fc3.weight": Choice.keep()})


@pytest.fixture
def fixed_table(monkeypatch) -> lat.LatencyTable:
    table = lat.LatencyTable(base_ns=150_000, reference_ns=150_000, batch=1, env={"fixed": True}, times=LENET)
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: table)
    return table


def _search(seed: int = 0) -> oc.search.SearchResult:
    return oc.search(
        str(MODEL), str(VAL), gates=GATES, trials=6, storage=None, formats=("runtime",), runtime_bits=(4, 8),
        objective="latency", sensitivity_samples=128, seed=seed,
    )  # fmt: skip


def test_latency_search_picks_the_fastest_passing_plan_deterministically(fixed_table) -> None:
    res = _search()
    assert res.passed and res.objective == "latency"
    assert res.best.plan == FASTEST
    assert res.best.size == fixed_table.predict(FASTEST) == 150_000 - 60_000 - 10_000
    assert res.original_size == 150_000 and res.ratio == pytest.approx(150_000 / 80_000)
    # every trial's cost is the table's prediction of its plan, and stage 1 measured the same deltas
    assert all(t.size == fixed_table.predict(t.plan) for t in res.trials)
    assert res.sensitivity.point("fc1.weight", Choice.runtime(4)).delta_bytes == -60_000
    lt = res.latency
    assert lt["predicted_ms"] == pytest.approx(0.08) and lt["base_ms"] == pytest.approx(0.15)
    assert lt["measured"]["fp32_ms"] > 0 and lt["measured"]["model_ms"] > 0
    layers = {r["name"]: r for r in res.layers}
    assert layers["fc1.weight"]["latency_delta_ms"] == pytest.approx(-0.06)
    # every figure is in ms, none of the trial costs is printed as bytes
    md = res.markdown()
    assert "0.0800 ms" in md and "predicted ms" in md and " ms is not below" in md
    assert "80,000" not in md and "80,000" not in res.summary()
    assert "0.0800 ms" in res.plan_yaml.splitlines()[0]
    again = _search()
    assert [(t.plan, t.size, t.state) for t in again.trials] == [(t.plan, t.size, t.state) for t in res.trials]
    assert again.model_bytes == res.model_bytes


def test_when_no_choice_is_faster_the_input_is_the_answer(monkeypatch, tmp_path) -> None:
    slower = {n: {"float": r["float"], "rt4": r["float"] * 2, "rt8": r["float"] * 3} for n, r in LENET.items()}
    table = lat.LatencyTable(base_ns=150_000, reference_ns=150_000, batch=1, env={}, times=slower)
    monkeypatch.setattr(lat, "measure_table", lambda *a, **k: table)
    res = _search()
    assert res.passed and not res.best.plan.compresses_anything and res.best.size == 150_000
    assert all(t.state == "PRUNED" for t in res.trials if t.number != res.best.number)
    with pytest.raises(GateFailedError, match="no plan is predicted faster than the input"):
        res.save(tmp_path / "o.onnx")  # a plan of nulls is nothing `compress --config` can apply
    assert not list(tmp_path.iterdir())


def test_latency_plan_reproduces_through_compress_and_a_rerun_reads_the_cache(tmp_path) -> None:
    out = tmp_path / "l.onnx"
    argv = [
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--max-accuracy-drop", "1", "--trials", "4",
        "--storage", "memory", "--quiet", "--formats", "runtime", "--runtime-bits", "4,8", "--objective", "latency",
        "--sensitivity-samples", "64", "--latency-batch", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "l.search.json").read_text())
    lt = report["latency"]
    assert report["passed"] and report["objective"] == "latency" and lt["batch"] == 2 and report["size_unit"] == "ns"
    assert report["best"]["size"] / 1e6 == pytest.approx(lt["predicted_ms"])
    assert lt["measured"]["fp32_ms"] > 0 and lt["measured"]["model_ms"] > 0
    assert report["file_bytes"] == out.stat().st_size and report["resident_bytes"] > 0
    assert set(lt["weights_ms"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    plan = tmp_path / "l.plan.yaml"
    assert "predicted latency" in plan.read_text().splitlines()[0]
    again = tmp_path / "again.onnx"
    assert main(["compress", str(MODEL), "-o", str(again), "--config", str(plan), "--quiet"]) == 0
    assert again.read_bytes() == out.read_bytes()
    # the rerun reads every timing from OUT.latency.json: same predictions, same plan, same bytes
    first = out.read_bytes()
    assert main([*argv, "--overwrite"]) == 0
    rerun = json.loads((tmp_path / "l.search.json").read_text())["latency"]
    assert rerun["measured_entries"] == 0 and rerun["weights_ms"] == lt["weights_ms"]
    assert rerun["base_ms"] == lt["base_ms"] and out.read_bytes() == first


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SearchSettings(latency_batch=0), "--latency-batch must be a positive integer"),
        (lambda: SearchSettings(latency_batch=-3), "--latency-batch must be a positive integer"),
        (lambda: SearchSettings(objective="latency"), "--objective latency needs --formats runtime"),
        (
            lambda: SearchSettings(objective="latency", formats=("runtime",), max_bytes=1000),
            "--max-bytes limits bytes, not latency",
        ),
        (lambda: lat.measure_table(twin_candidates(), CHOICES, batch=9), "more than the 8 validation samples"),
        (lambda: lat.Timing(rounds=0), "latency timing needs"),
        (lambda: twin_candidates().build(Plan()), "measure the latency table first"),
    ],
)
def test_bad_latency_settings_are_refused(make, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objective", "latency", "--formats", "runtime", "--latency-batch", "-1"], "--latency-batch must be"),
        (["--objective", "latency"], "--objective latency needs --formats runtime"),
        (["--objective", "latency", "--formats", "runtime", "--max-bytes", "5000"], "--max-bytes limits bytes"),
        (["--objective", "latency", "--formats", "runtime", "--latency-batch", "100000"], "--latency-batch 100000 is more"),
    ],
)
def test_cli_refuses_bad_latency_values_in_one_line(tmp_path, capsys, argv, message) -> None:
    rc = main([
        "search", str(MODEL), "-o", str(tmp_path / "o.onnx"), "--data", str(VAL), "--max-accuracy-drop", "1",
        "--quiet", "--storage", "memory", *argv,
    ])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.onnx").exists()


def test_the_bias_add_onnxruntime_fuses_is_timed_with_its_matmul() -> None:
    """x @ W + b runs as one kernel (MatMulNBits takes the bias; float MatMul + Add fuse), so W's
    micro-model holds the Add; V's output has two readers, so it is cut out alone."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["bias", "xw"], ["h"]),
        helper.make_node("MatMul", ["h", "V"], ["hv"]),
        helper.make_node("Add", ["hv", "bias"], ["k"]),
        helper.make_node("Mul", ["hv", "k"], ["y"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), n) for n in "WV"]
    inits.append(numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "bias"))
    model = helper.make_model(helper.make_graph(nodes, "bias", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    assert [n.op_type for n in lat._main_consumers(model, "W")] == ["MatMul", "Add"]
    assert [n.op_type for n in lat._main_consumers(model, "V")] == ["MatMul"]
    data = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    cands = Candidates(model, data, base=base_config(), metric=Metric("cosine"), gates=Gates(min_cosine=0.5),
                       container=False, objective="latency")  # fmt: skip
    table = lat.measure_table(cands, CHOICES, timer=lambda pairs, timing: [5_000 - 1_000 * i for i in range(len(pairs))])
    assert table.times["W"] == {"float": 5_000, "rt4": 4_000, "rt8": 3_000} and not table.unmeasured
