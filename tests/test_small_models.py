"""The two synthetic small models (models/build_small_models.py): rebuilt byte for byte from the
script, listed in the manifest, runnable in onnxruntime, and compressible with their Constant
weights inside ``If`` branches."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
sys.path.insert(0, str(ROOT))

from models.build_small_models import build_all  # noqa: E402

MANIFEST = json.loads((MODELS / "manifest.json").read_text())


@pytest.fixture(scope="module")
def built() -> dict[str, bytes]:
    return build_all()


def test_script_rebuilds_the_shipped_files(built: dict[str, bytes]) -> None:
    entries = {e["name"]: e for e in MANIFEST["synthetic_models"]}
    assert set(entries) == set(built) == {"vad_rnn", "mobilenet_se"}
    for name, data in built.items():
        assert (MODELS / f"{name}.onnx").read_bytes() == data, f"{name}: rerun models/build_small_models.py"
        assert hashlib.sha256(data).hexdigest() == entries[name]["sha256"]
        assert 400_000 < len(data) < 1_000_000  # small real-model sizes, below 1 MB


def test_vad_weights_are_constants_inside_if_branches() -> None:
    from onnxcompress.inventory import build_inventory

    model = onnx.load(str(MODELS / "vad_rnn.onnx"))
    assert not model.graph.initializer
    inv = build_inventory(model)
    comp = inv.compressible()
    assert comp and all(w.source == "constant" and w.graph.startswith("If_sr/") for w in comp)
    roles = {w.role for w in comp}
    assert {"rnn_w", "rnn_r", "conv"} <= roles
    ops = {u.op_type for w in comp for u in w.uses}
    assert {"LSTM", "GRU", "Conv"} <= ops


def test_mobilenet_has_many_small_tensors() -> None:
    from onnxcompress.inventory import build_inventory

    inv = build_inventory(onnx.load(str(MODELS / "mobilenet_se.onnx")))
    ops = {u.op_type for w in inv.weights for u in w.uses}
    assert {"Conv", "BatchNormalization", "Gemm"} <= ops
    left = [w for w in inv.weights if not w.compressible]
    assert len(left) > 100  # BN parameters and biases: the bytes a cost-aware plan must care about
    assert any(w.shape[1] == 1 for w in inv.compressible() if w.role == "conv")  # depthwise


def _vad_feeds(sr: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "input": (rng.standard_normal((2, 512)) * 0.1).astype(np.float32),
        "state": (rng.standard_normal((2, 2, 64)) * 0.1).astype(np.float32),
        "sr": np.array(sr, dtype=np.int64),
    }


@pytest.mark.parametrize("sr", [16000, 8000])
def test_vad_runs_and_compresses(tmp_path: Path, sr: int) -> None:
    import onnxcompress as oc

    src = str(MODELS / "vad_rnn.onnx")
    ref = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, _vad_feeds(sr))
    assert ref[0].shape == (2, 1) and ref[1].shape == (2, 2, 64)
    out = tmp_path / "vad.onnx"
    res = oc.compress(src, out)
    assert len(res.report.weights) == 12
    got = oc.load(out).run(None, _vad_feeds(sr))
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(a, b, atol=0.05)


def test_size_benchmark_accounts_for_every_byte(tmp_path: Path) -> None:
    """benchmarks/small_models.py on one model: the breakdown sums to the file, the bound is the
    issue's formula, and the sizes are the files' (no timing involved)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import small_models

    out = tmp_path / "r.json"
    assert small_models.main(["--models", "vad_rnn", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["plan"] for r in rows] == ["safe", "balanced", "small"]
    for r in rows:
        assert sum(r["breakdown"].values()) == r["onnx_bytes"]
        o = r["original"]
        assert o["file"] == (MODELS / "vad_rnn.onnx").stat().st_size
        assert r["bound_8bit"] == round(o["compressible_weight_bytes"] / 4 + o["other_bytes"])
        assert r["onnxc_bytes"] < r["onnx_bytes"] < o["file"]
