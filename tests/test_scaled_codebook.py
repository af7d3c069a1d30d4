"""granularity shared (algorithms/scaled_codebook.py): one codebook fitted on many small weights,
a scale per weight; the decoded values are exactly float32(shared) * scale, the plan picks it
only where a weight's own table would not pay for itself, and the shipped small models reach
issue 13's 8-bit size bound with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcompress.algorithms import codebook, scaled_codebook
from onnxcompress.config import WeightConfig, preset, resolve_granularity
from onnxcompress.errors import ConfigError
from onnxcompress.inventory import WeightInfo

MODELS = Path(__file__).resolve().parent.parent / "models"


def _weights(rng, shapes):
    return [(rng.standard_normal(s) * rng.uniform(0.01, 1.0)).astype(np.float32) for s in shapes]


def test_decoded_values_are_shared_entries_times_the_scale():
    rng = np.random.default_rng(0)
    ws = _weights(rng, [(16, 3, 3, 3), (64, 1, 3, 3), (24, 64, 1, 1)])
    shared = scaled_codebook.fit_shared([scaled_codebook.normalised_sample(w) for w in ws], bits=8)
    assert shared.shape == (256,) and shared.dtype == np.float32 and (np.diff(shared) >= 0).all()
    for w in ws:
        t = scaled_codebook.quantize_scaled(w, shared, bits=8)
        dec = codebook.decompress(t)
        want = (shared.astype(np.float32)[t.codes] * t.scales[0]).reshape(w.shape)
        np.testing.assert_array_equal(dec.view(np.uint32), want.view(np.uint32))
        rel = np.linalg.norm(dec - w) / np.linalg.norm(w)
        assert rel < 0.01, rel  # 256 shared levels: close to a table of its own


def test_scale_refit_never_worse_than_the_peak_scale():
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(72, 18)).astype(np.float32)
    shared = scaled_codebook.fit_shared(
        [scaled_codebook.normalised_sample(w)], bits=4, codebook_dtype="float16"
    )
    t = scaled_codebook.quantize_scaled(w, shared, bits=4)
    peak = np.float32(np.abs(w).max() / np.abs(shared.astype(np.float32)).max())
    table = shared.astype(np.float32) * peak
    naive = table[np.abs(w.reshape(-1, 1) - table[None, :]).argmin(1)]
    assert np.sum((codebook.decompress(t).reshape(-1) - w.reshape(-1)) ** 2) <= np.sum(
        (naive - w.reshape(-1)) ** 2
    )


def test_zero_weight_and_bad_inputs():
    shared = scaled_codebook.fit_shared([scaled_codebook.normalised_sample(np.zeros(10, np.float32))], bits=2)
    t = scaled_codebook.quantize_scaled(np.zeros((3, 4), np.float32), shared, bits=2)
    assert not codebook.decompress(t).any()
    with pytest.raises(ConfigError, match="float32 weights"):
        scaled_codebook.quantize_scaled(np.ones(8, np.float16), shared, bits=2)
    with pytest.raises(ConfigError, match="shape"):
        scaled_codebook.quantize_scaled(np.ones(8, np.float32), shared, bits=3)


def _info(shape, dtype="float32"):
    return WeightInfo(name="w", shape=shape, dtype=dtype, source="initializer", graph="", axis=0)


def test_plan_shares_only_where_a_table_does_not_pay():
    safe = preset("safe").weight
    assert resolve_granularity(_info((300, 784)), safe).granularity == "tensor"  # 1 KB on 235 KB
    assert resolve_granularity(_info((64, 1, 3, 3)), safe).granularity == "shared"  # 1 KB on 576 B
    assert resolve_granularity(_info((64, 1, 3, 3), "float16"), safe).granularity == "tensor"
    plain = WeightConfig(bits=8)  # no codebook_share: granularity tensor is what it says
    assert resolve_granularity(_info((64, 1, 3, 3)), plain).granularity == "tensor"
    pruned = WeightConfig(bits=8, sparsity=0.5, codebook_share=1 / 64)
    assert resolve_granularity(_info((64, 1, 3, 3)), pruned).granularity == "tensor"
    auto = WeightConfig(bits=6, granularity="auto", codebook_dtype="float16")
    assert resolve_granularity(_info((18, 72, 1, 1)), auto).granularity == "shared"
    with pytest.raises(ConfigError, match="granularity shared needs"):
        WeightConfig(granularity="shared", sparsity=0.5)
    with pytest.raises(ConfigError, match="codebook_share"):
        WeightConfig(codebook_share=2)


def test_code_vectors_is_a_plan_setting():
    from onnxcompress.config import from_dict

    cfg = from_dict({"preset": "safe", "code_vectors": True})
    assert cfg.code_vectors and cfg.weight.codebook_share == 1 / 64
    assert cfg.to_dict()["code_vectors"] is True
    with pytest.raises(ConfigError, match="code_vectors must be true or false"):
        from_dict({"code_vectors": "yes"})


def test_sharing_one_small_weight_does_not_pay_for_its_decode_function():
    """LeNet-300-100 under balanced: only the 100x10 layer would share, and a shared table saves
    less than the CodebookScaled body costs, so it keeps a table of its own; MobileNet-style
    layers share (dozens of tables saved)."""
    from onnxcompress.config import plan
    from onnxcompress.inventory import build_inventory
    from onnxcompress.model_io import open_model

    for name, want in (("lenet_300_100", False), ("mobilenet_se", True)):
        cfg = preset("balanced")
        planned, _ = plan(build_inventory(open_model(MODELS / f"{name}.onnx"), min_elements=256), cfg)
        assert any(c.granularity == "shared" for _, c in planned) is want, name


@pytest.mark.parametrize("name", ["lenet_300_100", "lenet5", "resnet_digits", "vad_rnn", "mobilenet_se"])
def test_safe_meets_the_8bit_size_bound(name, tmp_path):
    """Issue 13's goal on every shipped model: with safe, the .onnx is within 3% of
    (compressible weight bytes / 4 + every other byte of the original), the .onnxc below it."""
    from onnxcompress.compressor import compress_file
    from onnxcompress.container import write_container
    from onnxcompress.inventory import build_inventory
    from onnxcompress.model_io import open_model

    src = MODELS / f"{name}.onnx"
    cfg = preset("safe")
    compressible = sum(
        w.nbytes for w in build_inventory(open_model(src), min_elements=cfg.min_elements).compressible()
    )
    bound = compressible / 4 + (src.stat().st_size - compressible)
    out = tmp_path / "m.onnx"
    compress_file(src, out, cfg)
    write_container(out, tmp_path / "m.onnxc")
    assert out.stat().st_size <= 1.03 * bound, out.stat().st_size / bound
    assert (tmp_path / "m.onnxc").stat().st_size < bound
