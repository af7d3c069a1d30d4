"""The per-weight search (issue 12): allocator, end-to-end search, plan reproduction, refusal,
determinism and a study shared by two worker processes. Small grids and budgets keep it fast."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

import onnxcompress as oc  # noqa: E402
from onnxcompress.cli import main  # noqa: E402
from onnxcompress.search import allocate  # noqa: E402
from onnxcompress.search.candidates import Layer  # noqa: E402
from onnxcompress.search.metrics import Metric  # noqa: E402
from onnxcompress.search.sensitivity import Point, SensitivityTable  # noqa: E402
from onnxcompress.search.settings import SearchSettings  # noqa: E402
from onnxcompress.search.space import Choice  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "lenet_300_100.onnx"
VAL = ROOT / "models" / "digits_val.npz"
FAST = {"sparsities": (0.0, 0.7, 0.9), "bits": (3, 5), "sensitivity_samples": 128}
FAST_CLI = ["--sparsities", "0,0.7,0.9", "--bits", "3,5", "--sensitivity-samples", "128"]


def _table() -> SensitivityTable:
    rng = np.random.default_rng(0)
    layers = [Layer(f"w{i}", (10, 10), 100, ("Gemm",), 400) for i in range(3)]
    points = {}
    for layer in layers:
        pts = [Point(Choice.keep(), 0, 0.0, 1.0, 0.0)]
        for b in (2, 4, 6):
            for p in (0.0, 0.5, 0.9):
                size = -int(400 - 100 * b / 32 * (1 - p) * 10) + int(rng.integers(0, 5))
                err = float((1 + p * 4) * 2.0 ** (-2 * b) * rng.uniform(0.5, 2))
                pts.append(Point(Choice(p, b), size, err, 1.0 - err, err))
        points[layer.name] = pts
    return SensitivityTable("x", "agreement", 10, 2000, 1.0, layers, points)


def test_allocator_is_optimal_for_its_own_size_on_a_synthetic_table() -> None:
    table = _table()
    path = allocate.frontier(table)
    assert len(path) > 3
    sizes = [a.est_bytes for a in path]
    assert sizes == sorted(sizes)
    # every Lagrangian plan is optimal for its size: brute force over all combinations
    combos = list(itertools.product(*[table.points[layer.name] for layer in table.layers]))
    for a in path:
        best = min(
            sum(p.error for p in c)
            for c in combos
            if table.base_size + sum(p.delta_bytes for p in c) <= a.est_bytes
        )
        assert a.est_error <= best + 1e-12
    budget = (path[0].est_bytes + path[-1].est_bytes) // 2
    got = allocate.allocate(table, budget)
    assert got.est_bytes <= budget
    assert table.estimate(got.plan) == (got.est_bytes, got.est_error)
    assert allocate.allocate(table, 0).plan == path[0].plan  # nothing fits: the smallest plan


def test_search_finds_a_passing_plan_smaller_than_uniform_8_bit_and_its_yaml_reproduces_the_bytes(
    tmp_path,
) -> None:
    out = tmp_path / "l.onnxc"
    gates = ["--max-accuracy-drop", "1"]
    rc = main(
        [
            "search",
            str(MODEL),
            "-o",
            str(out),
            "--data",
            str(VAL),
            *gates,
            "--trials",
            "10",
            "--quiet",
            *FAST_CLI,
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "l.search.json").read_text())
    assert report["passed"] and report["best"]["size"] == out.stat().st_size
    assert (tmp_path / "l.plan.yaml").is_file() and (tmp_path / "l.search.md").is_file()
    # uniform baseline: 8-bit k-means on every weight (the default preset), same container
    main(["compress", str(MODEL), "-o", str(tmp_path / "u.onnxc"), "--quiet"])
    assert out.stat().st_size < (tmp_path / "u.onnxc").stat().st_size / 2
    res = oc.verify(str(MODEL), str(out), str(VAL), gates=oc.Gates(max_accuracy_drop=1.0), progress=False)
    assert res.passed
    # the plan file turns into the very same bytes through `compress --config`
    again = tmp_path / "again.onnxc"
    assert (
        main(["compress", str(MODEL), "-o", str(again), "--config", str(tmp_path / "l.plan.yaml"), "--quiet"])
        == 0
    )
    assert again.read_bytes() == out.read_bytes()
    # a rerun resumes the stored study: nothing new to run, the same answer
    rc = main(
        [
            "search",
            str(MODEL),
            "-o",
            str(out),
            "--data",
            str(VAL),
            *gates,
            "--trials",
            "10",
            "--quiet",
            "--overwrite",
            *FAST_CLI,
        ]
    )
    assert rc == 0
    again_report = json.loads((tmp_path / "l.search.json").read_text())
    assert len(again_report["trials"]) == len(report["trials"]) == 10
    assert again_report["best"] == report["best"]


def test_search_refuses_when_no_plan_passes_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "x.onnx"
    rc = main([
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--max-accuracy-drop", "-5", "--trials", "4",
        "--storage", "memory", "--quiet", *FAST_CLI,
    ])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "no tried plan passed" in err and "closest" in err and "nothing written" in err
    for name in ("x.onnx", "x.plan.yaml", "x.search.json", "x.search.md", "x.front.png"):
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "missing.npz", "--max-accuracy-drop", "1"], "no such file"),
        (["--data", str(VAL)], "nothing to satisfy"),
        (["--data", str(VAL), "--max-accuracy-drop", "1", "--storage", "nonsense"], "--storage"),
        (["--data", str(VAL), "--target-ratio", "0.5"], "--target-ratio"),
        (["--data", str(VAL), "--metric", "nosuchmodule:f", "--max-accuracy-drop", "1"], "cannot import"),
        (["--data", str(VAL), "--max-accuracy-drop", "1", "--sequential"], "--calibration-data"),
        (["--data", str(VAL), "--max-accuracy-drop", "1", "--uniform-evaluations", "-1"], "--uniform-evaluations"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message) -> None:
    rc = main(["search", str(MODEL), "-o", str(tmp_path / "o.onnx"), *argv, "--quiet", *FAST_CLI])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.onnx").exists()


def test_search_keywords_are_the_settings_fields() -> None:
    """``search`` builds one SearchSettings from its keywords: the same names and defaults."""
    from onnxcompress.search.api import search

    params = inspect.signature(search).parameters
    keywords = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords.pop("structured") is None
    assert keywords == {f.name: f.default for f in dataclasses.fields(SearchSettings)}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"trials": 0}, "--trials must be >= 1, got 0"),
        ({"workers": 0}, "--workers must be >= 1, got 0"),
        ({"uniform_evaluations": -1}, "--uniform-evaluations must be >= 0, got -1"),
        ({"target_ratio": 4.0, "max_bytes": 100}, "give --target-ratio or --max-bytes, not both"),
        ({"max_bytes": 0}, "--max-bytes must be positive, got 0"),
    ],
)
def test_search_settings_refuse_bad_values(options, message) -> None:
    with pytest.raises(oc.errors.ConfigError, match=message):
        SearchSettings(**options)
    with pytest.raises(oc.errors.ConfigError, match=message):  # replace checks again
        dataclasses.replace(SearchSettings(), **options)


def test_search_is_deterministic_for_a_seed_and_takes_a_user_metric(tmp_path) -> None:
    out = tmp_path / "d.onnx"  # same output: the second run reuses the stage-1 cache
    kw = {"output": out, "storage": None, "trials": 8, "seed": 3, **FAST}
    metric = oc.search.Metric("mean_abs_logit", "max", fn=_mean_abs_logit, limit=0.0)
    a = oc.search(str(MODEL), str(VAL), gates=oc.Gates(min_agreement=0.97), metric=metric, **kw)
    b = oc.search(str(MODEL), str(VAL), gates=oc.Gates(min_agreement=0.97), metric=metric, **kw)
    assert a.passed and a.metric == "mean_abs_logit"
    assert [(t.plan, t.size, t.metric, t.state) for t in a.trials] == [
        (t.plan, t.size, t.metric, t.state) for t in b.trials
    ]
    assert a.model_bytes == b.model_bytes
    assert b.seconds["stage1_cached"] == 1.0
    assert all(math.isfinite(t.metric) and t.metric > 0 for t in a.trials if t.evaluated)


def _mean_abs_logit(session, data) -> float:
    (out,) = session.run(["logits"], {"input": data["input"]})
    return float(np.abs(out).mean())


def accuracy_slowly_in_workers(session, data) -> float:
    """Top-1 accuracy on the labels, half a second slower in a worker process: a trial then outlasts
    a worker's start-up (imports take seconds on a loaded machine), so the first worker cannot run
    every trial before the second joins. Module level: spawned workers import it."""
    import multiprocessing
    import time

    if multiprocessing.parent_process() is not None:
        time.sleep(0.5)
    logits = session.run(None, {session.get_inputs()[0].name: data["input"]})[0]
    return float(np.mean(logits.argmax(1) == data["labels"]))


def test_two_worker_processes_share_one_study_and_record_every_trial_once(tmp_path) -> None:
    journal = tmp_path / "study.log"
    trials = 14
    res = oc.search(
        str(MODEL), str(VAL), output=tmp_path / "w.onnx", gates=oc.Gates(max_accuracy_drop=1.0), trials=trials,
        storage=f"journal://{journal}", study="shared", workers=2, uniform_evaluations=0, early_stop=False,
        metric=Metric("accuracy", "max", fn=accuracy_slowly_in_workers), **FAST,
    )  # fmt: skip
    study = optuna.load_study(
        study_name="shared", storage=oc.search.storage.open_storage(f"journal://{journal}")
    )
    all_trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers)) == len(res.trials)
    assert trials <= len(all_trials) <= trials + 1  # MaxTrialsCallback may let one in-flight trial finish
    assert {t.state.name for t in all_trials} <= {"COMPLETE", "PRUNED"}  # none lost, failed or left running
    workers = {t.user_attrs.get("worker") for t in all_trials if t.user_attrs.get("stage") == "stage3"}
    assert workers == {1, 2}  # both processes ran trials
    assert len({t.user_attrs["pid"] for t in all_trials}) == 3  # the parent (stage 2) and two workers
    assert res.passed


def test_size_target_and_pareto_modes(tmp_path) -> None:
    out = tmp_path / "t.onnxc"  # one output path: the second search reuses the stage-1 table
    target = oc.search(str(MODEL), str(VAL), output=out, target_ratio=30, trials=8, storage=None, **FAST)
    assert target.passed and target.mode == "target"
    assert target.best.size <= target.max_bytes == int(target.original_size / 30)
    front = oc.search(
        str(MODEL), str(VAL), output=out, pareto=True, gates=oc.Gates(max_accuracy_drop=1.0), trials=8,
        storage=None, **FAST,
    )  # fmt: skip
    assert front.mode == "pareto" and len(front.pareto) >= 2
    sizes = [t.size for t in front.pareto]
    metrics = [t.metric for t in front.pareto]
    assert sizes == sorted(sizes) and metrics == sorted(metrics)  # a real front: bigger is better
    assert front.plot_front(tmp_path / "front.png") and (tmp_path / "front.png").stat().st_size > 0


@pytest.mark.parametrize("mode", [[], ["--sequential", "--bias-correction"]], ids=["one-shot", "sequential"])
def test_calibrated_search_plan_reproduces_through_compress(tmp_path, mode) -> None:
    out = tmp_path / "c.onnx"
    calib = ROOT / "models" / "digits_calib.npz"
    rc = main([
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--max-accuracy-drop", "1", "--trials", "4",
        "--storage", "memory", "--quiet", "--sparsities", "0.5", "--bits", "4", "--sensitivity-samples", "64",
        "--calibration-data", str(calib), *mode,
    ])  # fmt: skip
    assert rc == 0
    plan_text = (tmp_path / "c.plan.yaml").read_text()
    assert ("sequential: true" in plan_text) == bool(mode)
    assert ("bias_correction: true" in plan_text) == bool(mode)
    if mode:  # the biases the calibration shifted are part of the written model
        import onnx
        from onnx import numpy_helper

        def biases(m: onnx.ModelProto) -> dict[str, np.ndarray]:
            return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name.endswith("bias")}

        before, after = biases(onnx.load(str(MODEL))), biases(onnx.load(str(out)))
        assert any(not np.array_equal(before[k], after[k]) for k in before)
    again = tmp_path / "again.onnx"
    argv = ["compress", str(MODEL), "-o", str(again), "--config", str(tmp_path / "c.plan.yaml"), "--quiet"]
    assert main([*argv, "--calibration-data", str(calib)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_calibration_cache_matches_one_shot_calibrate_and_reuses_encodings() -> None:
    import onnx

    from onnxcompress.calibration import calibrate
    from onnxcompress.calibration.cache import CalibrationCache
    from onnxcompress.calibration.config import CalibrationConfig
    from onnxcompress.compressor import compress_model
    from onnxcompress.search.space import Plan, base_config

    calib = ROOT / "models" / "digits_calib.npz"
    model = onnx.load(str(MODEL))
    ccfg = CalibrationConfig(sequential=False, samples=64)
    cache = CalibrationCache(model, str(calib), calibration=ccfg)
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    plans = [
        Plan({"fc1.weight": Choice(0.9, 3), "fc2.weight": Choice(0.8, 3), "fc3.weight": Choice(0.5, 5)}),
        Plan({"fc1.weight": Choice(0.9, 3), "fc2.weight": Choice(0.7, 2), "fc3.weight": Choice(0.5, 5)}),
    ]
    for plan in plans:
        cfg = plan.to_config(base_config(), names)
        fresh = onnx.load(str(MODEL))
        ref = calibrate(fresh, str(calib), cfg, calibration=ccfg, progress=False)
        want = compress_model(fresh, cfg, keep_decoded=False, weight_hook=ref.hook).model.SerializeToString()
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        got = compress_model(copy, cfg, keep_decoded=False, weight_hook=cache.hook).model.SerializeToString()
        assert got == want
    assert cache.calibrations == 4  # the second plan recalibrated fc2 only
    wcfg = cfg.resolve("fc2.weight", ("Gemm",))
    assert wcfg is not None
    err = cache.layer_error("fc2.weight", wcfg)  # the layer-output proxy, from the memo
    assert cache.calibrations == 4 and err is not None and 0 < err < 1


def test_global_profile_prunes_big_layers_more_and_matches_the_global_fraction() -> None:
    rng = np.random.default_rng(0)
    weights = {"big": rng.normal(0, 0.02, (300, 100)), "small": rng.normal(0, 0.2, (10, 30))}
    plan = allocate.global_profile(weights, 0.9, 3)
    big, small = plan.choices["big"], plan.choices["small"]
    assert big.bits == small.bits == 3 and big.sparsity > small.sparsity
    total = sum(w.size for w in weights.values())
    pruned = sum(plan.choices[k].sparsity * w.size for k, w in weights.items())
    assert abs(pruned / total - 0.9) < 0.01
    assert all(c.sparsity == 0 for c in allocate.global_profile(weights, 0.0, 4).choices.values())


def test_uniform_seeds_join_the_study_and_the_search_is_never_worse_than_them(tmp_path) -> None:
    res = oc.search(
        str(MODEL), str(VAL), gates=oc.Gates(max_accuracy_drop=1.0), trials=12, storage=None,
        uniform_evaluations=4, **FAST,
    )  # fmt: skip
    seeds = [t for t in res.trials if t.stage == "uniform"]
    assert seeds and all(len({c.bits for c in t.plan.choices.values()}) == 1 for t in seeds)
    assert res.passed
    if res.uniform is not None:
        assert res.best.size <= res.uniform.size
    assert sum(1 for t in seeds if t.samples) <= 4  # model runs within the budget


def test_nn_agreement_on_a_hand_made_embedding_set() -> None:
    from onnxcompress.search.metrics import nearest_neighbours, nn_agreement

    def at(*degrees: float) -> np.ndarray:
        rad = np.radians(degrees)
        return np.stack([np.cos(rad), np.sin(rad)], 1)

    # two pairs 10 degrees apart (0,1) and (2,3), far from each other; 4 is 15 degrees past 3
    ref = at(0, 10, 90, 100, 115)
    assert nearest_neighbours(ref).tolist() == [1, 0, 3, 2, 3]
    assert nn_agreement(ref, ref) == 1.0
    assert nn_agreement(ref, 3.0 * ref) == 1.0  # cosine: the scale of a row does not matter
    moved = at(0, 10, 90, 100, 3)  # 4 moves next to 0: rows 0, 1 and 4 change their neighbour
    assert nearest_neighbours(moved).tolist() == [4, 4, 3, 2, 0]
    assert nn_agreement(ref, moved) == pytest.approx(2 / 5)
    assert nn_agreement(ref, np.roll(ref, 1, axis=0)) < 1.0  # the metric can fail
    with pytest.raises(oc.errors.DataError, match="at least 2"):
        nn_agreement(ref[:1], ref[:1])


def test_search_gates_on_nn_agreement_from_the_cli(tmp_path) -> None:
    from onnxcompress.search.metrics import load_metric, nn_agreement

    assert load_metric("nn_agreement", limit=0.9).limit == 0.9
    out = tmp_path / "n.onnx"
    rc = main([
        "search", str(MODEL), "-o", str(out), "--data", str(VAL), "--metric", "nn_agreement",
        "--metric-limit", "0.97", "--trials", "6", "--storage", "memory", "--quiet", *FAST_CLI,
    ])  # fmt: skip
    assert rc == 0
    assert "nn_agreement" in (tmp_path / "n.search.md").read_text()
    # the chosen model's agreement, recomputed independently of the search, meets the limit
    from onnxcompress.sessions import make_session

    feed = {"input": np.load(VAL)["input"]}
    ref = make_session(MODEL.read_bytes()).run(None, feed)[0]
    cand = make_session(out.read_bytes()).run(None, feed)[0]
    assert out.stat().st_size < MODEL.stat().st_size
    assert nn_agreement(ref, cand) >= 0.97
    # an impossible limit: nothing passes, exit 1
    rc = main([
        "search", str(MODEL), "-o", str(tmp_path / "m.onnxc"), "--data", str(VAL), "--metric", "nn_agreement",
        "--metric-limit", "1.01", "--trials", "3", "--storage", "memory", "--quiet", *FAST_CLI,
    ])  # fmt: skip
    assert rc == 1


def test_built_candidate_memo_is_bounded_in_bytes(monkeypatch) -> None:
    from onnxcompress.search import candidates as cmod
    from onnxcompress.search.metrics import Metric
    from onnxcompress.search.space import Plan, base_config

    cands = cmod.Candidates(str(MODEL), str(VAL), base=base_config(), metric=Metric("agreement"),
                            gates=oc.Gates(min_agreement=0.9), container=False)  # fmt: skip
    plans = [Plan({layer.name: Choice(0.0, b) for layer in cands.layers}) for b in (3, 4, 5)]
    one = len(cands.build(plans[0]).onnx_bytes)
    cands.forget()
    monkeypatch.setattr(cmod, "BUILT_MEMO_BYTES", int(2.5 * one))  # room for two candidates
    for plan in plans:
        cands.build(plan)
    assert len(cands._cache) == 1 and cands._cache_bytes <= 2.5 * one  # the third cleared the memo
    assert cands.build(plans[2]) is cands.build(plans[2])  # still a memo
