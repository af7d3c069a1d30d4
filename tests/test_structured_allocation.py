"""``allocation: global``: one ratio for a pool of groups, channels taken where they cost least."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from structured_models import mlp_stack, mlp_stack_params

from onnxcompress.calibration.capture import get_tensor
from onnxcompress.cli import main
from onnxcompress.errors import ConfigError
from onnxcompress.sessions import make_session
from onnxcompress.structured import StructuredConfig, count_flops, prune_model, structured_from_dict


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(None, {"x": x})[0]


def redundant_stack() -> tuple[dict, onnx.ModelProto]:
    """Block 1's neurons 8..15 duplicate 0..7 (half of them cost nothing after a refit); block 2's
    neurons are all distinct."""
    p = mlp_stack_params(seed=4)
    p["w1"][:, 8:], p["b1"][8:] = p["w1"][:, :8], p["b1"][:8]
    return p, mlp_stack(p)


def batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((8, s, 8)).astype(np.float32)} for s in (4, 7, 10, 13)]


def widths(m: onnx.ModelProto) -> tuple[int, int]:
    return get_tensor(m, "w1").shape[1], get_tensor(m, "w3").shape[1]


@pytest.mark.parametrize("criterion", ["obs", "activation"])
def test_global_allocation_takes_the_cheap_neurons_of_one_layer(criterion):
    _, m = redundant_stack()
    x = np.random.default_rng(9).standard_normal((4, 6, 8)).astype(np.float32)
    y = run(m, x)
    err, rows = {}, {}
    for allocation in ("uniform", "global"):
        cfg = StructuredConfig(ratio=0.25, criterion=criterion, allocation=allocation)
        pm, rep = prune_model(m, cfg, batches())
        err[allocation] = float(np.linalg.norm(run(pm, x) - y) / np.linalg.norm(y))
        rows[allocation] = {g.name: g for g in rep.groups if not g.refused}
        assert sum(g.channels_before - g.channels_after for g in rep.groups) == 8  # 25% of 32 either way
        if allocation == "uniform":
            assert widths(pm) == (12, 12)
    if criterion == "obs":  # duplicates cost nothing: all 8 come from block 1, and the refit is exact
        assert err["global"] < 1e-3 < err["uniform"]
        assert rows["global"]["fc1"].ratio == 0.5 and rows["global"]["fc3"].ratio == 0.0
    else:  # activation cannot see that a pair is redundant: it only has to spend the same budget
        assert rows["global"]["fc1"].ratio != rows["global"]["fc3"].ratio


def test_overridden_groups_keep_their_ratio_and_the_rest_share_the_global_one():
    _, m = redundant_stack()
    cfg = StructuredConfig(ratio=0.25, criterion="obs", allocation="global", names={"fc1": 0.125})
    pm, _ = prune_model(m, cfg, batches())
    assert widths(pm) == (14, 12)  # fc1 as told; the pool (fc3 alone) loses 25% of its 16


def test_global_allocation_without_calibration_and_with_a_flop_target():
    p = mlp_stack_params(seed=1)
    p["w3"][:, :8] *= 0.01  # half of block 2's neurons: a tiny share of its l1 norm
    m = mlp_stack(p)
    pm, rep = prune_model(m, StructuredConfig(ratio=0.25, criterion="l1", allocation="global"))
    assert widths(pm) == (16, 8)
    before = count_flops(m, {"N": 1, "S": 16}).total
    pm, rep = prune_model(m, StructuredConfig(target_flops=0.7, allocation="global", min_channels=2))
    assert count_flops(pm, {"N": 1, "S": 16}).total <= 0.7 * before
    assert rep.flops_after <= 0.7 * rep.flops_before and min(widths(pm)) >= 2


def test_allocation_setting_validation_plan_and_cli(tmp_path, capsys):
    assert structured_from_dict({"ratio": 0.3, "allocation": "global"}).allocation == "global"
    with pytest.raises(ConfigError, match="allocation must be one of uniform, global"):
        StructuredConfig(ratio=0.3, allocation="greedy")
    _, m = redundant_stack()
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(m, str(src))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((64, 5, 8)).astype(np.float32))
    report, plan = tmp_path / "r.json", tmp_path / "plan.json"
    plan.write_text(json.dumps({"structured": {"criterion": "obs", "allocation": "uniform"}}))
    args = ["compress", str(src), "-o", str(out), "--config", str(plan), "--structured", "0.25", "--structured-allocation", "global",
            "--calibration-data", str(calib), "--structured-latency", "none", "--min-elements", "64", "--bits", "2",
            "--report", str(report), "--quiet"]  # fmt: skip
    assert main(args) == 0
    groups = {g["name"]: g for g in json.loads(report.read_text())["structured"]["groups"]}
    assert groups["fc1"]["channels_after"] == 8 and groups["fc3"]["channels_after"] == 16
    bad_out = tmp_path / "bad.onnx"
    bad = ["compress", str(src), "-o", str(bad_out), "--structured", "0.25", "--structured-allocation", "x"]
    with pytest.raises(SystemExit):
        main(bad)
    assert not bad_out.exists()


def test_refit_prior_pulls_toward_the_sliced_weights_and_residual_refit_cancels_carried_error():
    p = mlp_stack_params(seed=2)
    m = mlp_stack(p)
    x = np.random.default_rng(9).standard_normal((8, 6, 8)).astype(np.float32)
    y = run(m, x)
    # an overwhelming ridge: the refit returns its prior (the sliced weights, or zero)
    for prior in ("sliced", "zero"):
        cfg = StructuredConfig(ratio=0.5, criterion="l1", ridge=1e8, refit_prior=prior)
        pm, _ = prune_model(m, cfg, batches())
        w2 = get_tensor(pm, "w2")
        keep = [
            int(np.flatnonzero(np.all(np.isclose(p["w1"], get_tensor(pm, "w1")[:, [j]]), axis=0))[0])
            for j in range(8)
        ]
        if prior == "sliced":
            np.testing.assert_allclose(w2, p["w2"][keep], rtol=1e-4, atol=1e-6)
        else:
            assert np.abs(w2).max() < 1e-4 * np.abs(p["w2"]).max()
    err = {}
    for residual in (False, True):
        cfg = StructuredConfig(ratio=0.5, criterion="activation", refit_residual=residual)
        pm, rep = prune_model(m, cfg, batches())
        err[residual] = float(np.linalg.norm(run(pm, x) - y) / np.linalg.norm(y))
    assert err[True] < 0.95 * err[False]  # block 2 also absorbs part of block 1's error in the stream
    for bad in ({"refit_prior": "one"}, {"refit_residual": "yes"}):
        with pytest.raises(ConfigError):
            structured_from_dict({"ratio": 0.3, **bad})
