"""Cost-aware granularity: per-channel codebooks only where they cost at most 1/8 of the indices."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcompress.algorithms import codebook
from onnxcompress.granularity import codebook_bytes, cost_aware_granularity


def test_large_rows_keep_per_channel_codebooks() -> None:
    # a 4096-wide row at 6 bits: 3072 B of indices against a 256 B codebook (1/12)
    assert cost_aware_granularity((1024, 4096), 0, 6) == ("channel", 1)


def test_small_rows_share_a_codebook_across_channels() -> None:
    # LeNet-5 conv2 [50, 20, 5, 5]: 500 weights a row, 375 B of indices; 256 B codebook -> 6 rows
    assert cost_aware_granularity((50, 20, 5, 5), 0, 6) == ("group", 6)
    assert cost_aware_granularity((50, 20, 5, 5), 0, 6, "float16") == ("group", 3)


def test_depthwise_and_tiny_weights_get_one_codebook() -> None:
    assert cost_aware_granularity((144, 1, 3, 3), 0, 6) == ("tensor", 144)
    assert cost_aware_granularity((20, 1, 5, 5), 0, 8) == ("tensor", 20)
    assert cost_aware_granularity((), 0, 6) == ("tensor", 1)


@pytest.mark.parametrize("shape", [(64, 64, 3), (300, 784), (16, 3, 3, 3), (10, 500), (256, 64, 1, 1)])
@pytest.mark.parametrize("bits,dtype", [(6, "float32"), (5, "float16"), (8, "float32")])
def test_choice_keeps_codebooks_within_an_eighth_and_is_never_larger(shape, bits, dtype) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    gran, g = cost_aware_granularity(shape, 0, bits, dtype)
    ct = codebook.quantize(w, bits=bits, granularity=gran, axis=0, group_size=max(g, 1), codebook_dtype=dtype)
    cb = ct.codebook.nbytes
    idx = w.size * bits / 8
    if gran != "tensor":
        assert cb <= idx / 8 + codebook_bytes(bits, dtype)  # the last, shorter group may exceed by one
    per_channel = codebook.quantize(w, bits=bits, granularity="channel", axis=0, codebook_dtype=dtype)
    assert cb <= per_channel.codebook.nbytes


def test_auto_is_resolved_per_weight_by_the_plan() -> None:
    """``granularity: auto`` (balanced's setting): the plan gives each weight the cost-aware choice,
    so LeNet-5's small conv1 gets one codebook and no weight carries ``auto`` to the methods."""
    from pathlib import Path

    from onnxcompress import preset
    from onnxcompress.config import plan
    from onnxcompress.inventory import build_inventory
    from onnxcompress.model_io import open_model

    MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

    cfg = preset("balanced")
    assert cfg.weight.granularity == "auto"
    model = open_model(MODELS_DIR / "lenet5.onnx")
    planned, _ = plan(build_inventory(model, min_elements=cfg.min_elements), cfg)
    got = {info.name: (c.granularity, c.group_size) for info, c in planned}
    assert all(g != "auto" for g, _ in got.values())
    for info, c in planned:
        want = cost_aware_granularity(info.shape, info.axis, c.bits, c.codebook_dtype, can_share=True)
        if want[0] == "shared" and c.granularity == "tensor":
            continue  # one small weight alone does not pay for the shared decode function
        assert (c.granularity, c.group_size if c.granularity == "group" else want[1]) == want


def test_balanced_is_between_small_and_safe_on_lenet5(tmp_path) -> None:
    from pathlib import Path

    from onnxcompress import preset
    from onnxcompress.compressor import compress_file

    MODELS_DIR = Path(__file__).resolve().parent.parent / "models"

    sizes = {}
    for name in ("safe", "balanced", "small"):
        out = tmp_path / f"{name}.onnx"
        compress_file(MODELS_DIR / "lenet5.onnx", out, preset(name))
        sizes[name] = out.stat().st_size
    assert sizes["small"] < sizes["balanced"] < sizes["safe"]
