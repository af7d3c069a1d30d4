"""The committed digit models are exactly what models/manifest.json says they are.

The models and test sets are the project's reference inputs for compression experiments, so any
accidental change to them (a re-export, a retrain, a corrupted checkout) must fail loudly here. Reads
the npz files with plain numpy, as ``onnxcompress verify --data`` does; no torch needed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MANIFEST: dict[str, Any] = json.loads((MODELS_DIR / "manifest.json").read_text())
ENTRIES: list[dict[str, Any]] = MANIFEST["models"]
HELD_OUT = "digits_test.npz"
MIN_HELD_OUT_ACCURACY = 0.97
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


def _load_npz(name: str) -> dict[str, np.ndarray]:
    info = MANIFEST["dataset"]["files"][name]
    with np.load(MODELS_DIR / name) as npz:
        return {"input": npz[info["input_key"]], "labels": npz[info["label_key"]]}


@pytest.fixture(scope="module")
def datasets() -> dict[str, dict[str, np.ndarray]]:
    return {name: _load_npz(name) for name in MANIFEST["dataset"]["files"]}


def test_manifest_lists_the_three_models() -> None:
    assert [e["name"] for e in ENTRIES] == ["lenet_300_100", "lenet5", "resnet_digits"]


def test_test_sets_match_manifest(datasets: dict[str, dict[str, np.ndarray]]) -> None:
    for name, data in datasets.items():
        x, y = data["input"], data["labels"]
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (MANIFEST["dataset"]["files"][name]["images"], 1, 28, 28)
        assert y.shape == (len(x),) and set(np.unique(y)) == set(range(10))
        # Documented storage: every input is a multiple of 1/255 in [0, 1], i.e. uint8-exact.
        assert x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_array_equal(np.round(x * 255).astype(np.float32) / 255, x)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_model_matches_manifest(entry: dict[str, Any], datasets: dict[str, dict[str, np.ndarray]]) -> None:
    path = MODELS_DIR / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]

    model = onnx.load(str(path))
    assert not any(
        t.HasField("data_location") and t.data_location == TensorProto.EXTERNAL
        for t in model.graph.initializer
    ), "models must be self-contained"
    assert model.opset_import[0].version == entry["opset"]
    weights = sum(
        numpy_helper.to_array(t).size for t in model.graph.initializer if t.data_type in FLOAT_TYPES
    )
    assert weights == entry["onnx_weight_elements"]
    if entry["name"] != "resnet_digits":  # no BatchNorm: ONNX weights are exactly the torch parameters
        assert weights == entry["parameters"]

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == [entry["input"]["name"]]
    assert [o.name for o in sess.get_outputs()] == [entry["output"]["name"]]
    for name in entry["data_files"]:
        data = datasets[name]
        logits = sess.run([entry["output"]["name"]], {entry["input"]["name"]: data["input"]})[0]
        accuracy = float((logits.argmax(axis=1) == data["labels"]).mean())
        assert accuracy == pytest.approx(entry["accuracy"][name], abs=1e-9), name
    assert entry["accuracy"][HELD_OUT] >= MIN_HELD_OUT_ACCURACY


# -------------------------------------------------------------------------------------------------
# models/export_minilm.py: the parts that need no torch (cache logic, sentence extraction)
# -------------------------------------------------------------------------------------------------


def _export_minilm() -> Any:
    root = str(MODELS_DIR.parent)
    if root not in sys.path:  # `models` is a folder of the repository, not an installed package
        sys.path.insert(0, root)
    return importlib.import_module("models.export_minilm")


def test_minilm_sentences_are_plain_prose() -> None:
    sentences = _export_minilm().stdlib_sentences()
    assert len(sentences) >= 500 and sentences == sorted(set(sentences))
    for s in sentences:
        assert 5 <= len(s.split()) <= 40 and s[0].isupper() and s[-1] in ".!?"


def test_ensure_minilm_reuses_a_complete_cache(tmp_path: Path) -> None:
    module = _export_minilm()
    for name in module.FILES.values():
        (tmp_path / name).write_text("x")
    paths = module.ensure_minilm(tmp_path)  # complete: returned as is, nothing imported or rebuilt
    assert paths == {key: tmp_path / name for key, name in module.FILES.items()}
    assert (tmp_path / module.FILES["model"]).read_text() == "x"


def test_ensure_minilm_says_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _export_minilm()
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(module.MiniLMUnavailable, match="needs 'torch'"):
        module.ensure_minilm(tmp_path)
    assert not (tmp_path / module.FILES["meta"]).exists()


def test_minilm_validation_split_shares_no_sentence_with_the_test_split() -> None:
    module = _export_minilm()
    pool = module.stdlib_sentences()
    test = module._spread(pool, module.N_SENTENCES)
    val = module.validation_split(pool, test)
    assert len(val) == min(module.N_VALIDATION, len(pool) - len(test))
    assert not set(val) & set(test)
    assert val == sorted(val)  # spread through the sorted pool, not clustered at one end


def test_minilm_calibration_split_is_the_rest_of_the_pool() -> None:
    module = _export_minilm()
    pool = module.stdlib_sentences()
    test = module._spread(pool, module.N_SENTENCES)
    val = module.validation_split(pool, test)
    calib = module.calibration_split(pool, test, val)
    assert not set(calib) & (set(test) | set(val))
    assert sorted(calib + val + test) == pool  # every sentence in exactly one split
