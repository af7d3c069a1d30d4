"""bench: file sizes with external data, fresh-process measurements, table/JSON, provider errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.commands.render import format_bench
from onnxcompress.errors import ConfigError, InvalidModelError
from onnxcompress.evaluation.bench import bench, bench_to_json
from onnxcompress.model_io import size_on_disk


def _model(n: int, seed: int) -> onnx.ModelProto:
    w = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    a, b = d / "a.onnx", d / "b.onnx"
    onnx.save(_model(64, 0), a)
    onnx.save(_model(64, 1), b, save_as_external_data=True, location="b.data", size_threshold=0)
    return a, b


def test_size_includes_external_data(two_models):
    a, b = two_models
    assert size_on_disk(a) > 64 * 64 * 4
    assert size_on_disk(b) == b.stat().st_size + (b.parent / "b.data").stat().st_size
    with pytest.raises(InvalidModelError, match="no such file"):
        size_on_disk(b.parent / "missing.onnx")


def test_bench_two_models_side_by_side(two_models, tmp_path):
    a, b = two_models
    report = bench([a, b], runs=5, warmup=1, rounds=2, batch_size=4, progress=False)
    assert [m.model for m in report.models] == [str(a), str(b)]
    for m in report.models:
        assert len(m.rounds) == 2 and m.batch_size == 4
        assert m.providers == ("CPUExecutionProvider",)
        assert 0 < m.p50_ms <= m.p99_ms and m.create_s > 0 and m.first_run_s > 0
        assert m.throughput == pytest.approx(4 / (m.p50_ms / 1e3), rel=0.5)
        assert m.peak_rss_bytes is None or m.peak_rss_bytes > 10 << 20
        spread = m.p50_spread
        assert spread["min"] <= m.p50_ms <= spread["max"]
        assert m.flops == 2 * 4 * 64 * 64 and m.flops_unknown == 0  # counted at the measured batch
        assert m.cpu_p50_ms is not None and 0 < m.cpu_p50_ms
    table = format_bench(report)
    assert "session create (s)" in table and "p50 latency (ms)" in table and "(x" in table
    assert "MFLOPs per run" in table and "0.03 (x1.000)" in table and "CPU time p50 (ms)" in table
    assert "CPUExecutionProvider" in table
    data = json.loads(bench_to_json(report))
    assert data["models"][0]["ratios_vs_first"]["p50_ms"] == 1.0
    assert data["models"][1]["flops_per_run"] == 32768 and data["models"][1]["ratios_vs_first"]["flops"] == 1.0
    assert len(data["models"][1]["rounds"]) == 2


def test_bench_errors(two_models, tmp_path):
    import onnxruntime

    a, _ = two_models
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match="CUDAExecutionProvider requested but not available"):
            bench([a], providers=["cuda"], progress=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(InvalidModelError):
        bench([bad], runs=1, rounds=1, progress=False)


def test_bench_cli(two_models, capsys):
    from onnxcompress.cli import main

    a, b = two_models
    assert main(["bench", str(a), str(b), "--runs", "3", "--warmup", "0", "--rounds", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert a.name in out and b.name in out and "p50 latency" in out
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert main(["bench", str(a), "--providers", "cuda"]) == 2
        assert "CUDAExecutionProvider requested but not available" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="Linux /proc only")
def test_worker_peak_rss_is_its_own_not_the_parents():
    """ru_maxrss survives fork + exec: a worker started by a big parent must not report its peak."""
    import subprocess
    import sys

    from onnxcompress.evaluation.bench import peak_rss_bytes

    ballast = np.ones(400 * 2**20 // 8)  # touch 400 MB in this (parent) process
    assert peak_rss_bytes() >= ballast.nbytes
    code = "from onnxcompress.evaluation.bench import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    assert 0 < child < ballast.nbytes


def test_bench_host_decode_of_a_compressed_model(two_models, tmp_path, capsys):
    """--decode host measures the onnxcompress.load path; its output is the table's footer."""
    from onnxcompress.cli import main

    a, _ = two_models
    c = tmp_path / "c.onnx"
    assert main(["compress", str(a), "-o", str(c), "--bits", "4", "--min-elements", "16", "--quiet"]) == 0
    report = bench([a, c], runs=2, warmup=0, rounds=1, progress=False, decode="host")
    assert report.config["decode"] == "host" and all(m.p50_ms > 0 for m in report.models)
    assert "decode by host" in format_bench(report)
    with pytest.raises(ConfigError, match="decode mode"):
        bench([a], decode="numpy", progress=False)
    capsys.readouterr()
    assert main(["bench", str(c), "--runs", "2", "--rounds", "1", "--decode", "host", "-q"]) == 0
    assert "decode by host" in capsys.readouterr().out


@pytest.mark.parametrize("decode", ["host", "onnxruntime"])
def test_session_time_counts_no_imports_for_baseline_or_candidate(tmp_path, decode):
    """``bench --decode host`` used to time the loading path's first imports into the
    uncompressed baseline's session creation (0.15 s against 0.035 s for LeNet-5): every model now
    goes through the same ``load`` with everything imported before the clock starts."""
    from pathlib import Path

    from onnxcompress.compressor import compress_file
    from onnxcompress.evaluation.bench import BenchOptions, _run_worker

    base = Path(__file__).resolve().parent.parent / "models" / "lenet5.onnx"
    cand = tmp_path / "c.onnx"
    compress_file(base, cand)
    options = BenchOptions(runs=2, warmup=0, rounds=1, decode=decode)
    for model in (base, cand):
        result = _run_worker(str(model), options)
        assert result["imported_while_timed"] == [], (model.name, result["imported_while_timed"])


def test_model_rss_is_what_the_model_adds(two_models, tmp_path):
    """peak RSS minus the RSS before session create: the ~100 MB of Python + onnxruntime drop out,
    so a 32 MiB weight shows up as at least its own size and the 16 KiB model as far less."""
    small, _ = two_models
    big = tmp_path / "big.onnx"
    onnx.save(_model(2896, 2), big)  # 2896^2 * 4 bytes = 32 MiB
    report = bench([small, big], runs=2, warmup=0, rounds=1, batch_size=1, progress=False)
    s, b = report.models
    if b.peak_rss_bytes is None or b.rounds[0].rss_before_create_bytes is None:
        pytest.skip("this platform reports no /proc/self/status")
    weight = 2896 * 2896 * 4
    assert b.model_rss_bytes is not None and s.model_rss_bytes is not None
    assert weight * 0.95 <= b.model_rss_bytes < b.peak_rss_bytes
    assert s.model_rss_bytes < weight / 2
    assert b.rounds[0].rss_before_create_bytes > 10 << 20  # the imports are in the baseline
    table = format_bench(report)
    assert "model RSS (peak - before load)" in table
    data = json.loads(bench_to_json(report))
    assert data["models"][1]["model_rss_bytes"] == b.model_rss_bytes
    assert data["models"][1]["ratios_vs_first"]["model_rss"] > 2
    assert data["models"][1]["rounds"][0]["rss_before_create_bytes"] > 0


@pytest.mark.parametrize("decode", ["onnxruntime", "host"])
def test_stock_worker_is_a_deployment_process(decode):
    """A stock session of a plain .onnx is measured in a process that holds what a deployment holds
    (numpy and onnxruntime, not onnx's protobuf runtime, ~26 MB), so peak-RSS ratios are not pulled
    towards 1; host decode needs onnx and imports it before the clock."""
    import subprocess
    import sys
    from pathlib import Path

    base = Path(__file__).resolve().parent.parent / "models" / "lenet5.onnx"
    code = (
        "import sys, json\n"
        "from onnxcompress.evaluation.bench import BenchOptions, measure\n"
        f"r = measure({str(base)!r}, BenchOptions(runs=2, warmup=0, rounds=1, decode={decode!r}))\n"
        "print(json.dumps(['onnx' in sys.modules, r['imported_while_timed']]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    onnx_loaded, imported = json.loads(out.splitlines()[-1])
    assert imported == []
    assert onnx_loaded == (decode == "host")
