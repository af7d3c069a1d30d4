"""``onnxcompress search`` against the baselines, every figure on held-out test data.

    python benchmarks/search.py [--models lenet_300_100,lenet5,resnet_digits] [--trials 60] [--gate 0.5]
                                [--seed 0] [--baseline-evals N] [--calibration [--calibration-mode sequential|oneshot]]
                                [--uniform-evaluations 8]

Protocol (honest numbers): the search, and every baseline's choice, sees only
``models/digits_val.npz`` (1000 augmented *training* images, ``models/make_digits_splits.py``);
the chosen models are then measured once on the held-out ``digits_test.npz`` (360) and
``digits_test_aug.npz`` (3600), which nothing was tuned on. Sizes are ``.onnxc`` containers; the
ratio is the fp32 ``.onnx`` file over the container. The gate used for choosing is
``--max-accuracy-drop GATE`` on the validation data (default 0.5 points, a margin for the 1-point
target on the test sets) together with ``--min-agreement`` (default 0.99: at most 1% of the
validation predictions may change). The agreement gate was added after a first run with the
accuracy gate alone: accuracy drop lets flips in both directions cancel, and the plans chosen by it
lost up to 2.2 points on the test sets (docs/search.md has both runs).

Side by side at the same number of model evaluations E (E = the full search's model runs, stage 1
included; ``--baseline-evals`` caps it on a busy machine and the JSON says so):

* uniform: one (sparsity, bits) for every weight, a grid of about E settings (bits 2-8 x sparsity
  0-0.97), the smallest that passes the validation gate;
* random: Optuna's RandomSampler over the stage-3 space, at most E model runs and E trials, smallest passing;
* stage 2: the Lagrangian allocation checked on the real model (the search's stage-2 trials alone);
* uniform_seeds: the search's own uniform seeds (one bit width, global-magnitude sparsities), the
  best of them that passed;
* stage 3: the whole search (TPE warm-started from stage 2).

With ``--calibration`` every candidate (search and baselines) is calibrated on digits_calib.npz;
``--calibration-mode sequential`` (default) calibrates each stage-2/3 candidate as ``compress
--calibration-data`` does with ``sequential: true, bias_correction: true`` (a full calibration per
candidate), ``oneshot`` with the memoised one-shot cache (the earlier runs). ``gate_variants`` in
the JSON re-select, post hoc and for reporting only, the smallest of the search's evaluated plans
under other validation gates and give its test figures.

Targets (issue 12): LeNet-300-100 >= 40x, LeNet-5 >= 50x, residual CNN >= 16x, each within 1 point of
fp32 on both test sets; the search >= 1.3x smaller than the best uniform setting at equal or better
test fidelity; LeNet-5's search under 5 minutes on 2 cores. The machine is shared with other jobs:
timings are rough.

MiniLM (``--models minilm``, run when the MiniLM cache of ``models/export_minilm.py`` exists, else
skipped with the reason): the search sees only ``val_sentences.npz`` (500 validation sentences) and
gates on mean cosine to fp32 (``--minilm-cosine``, default 0.992) and nearest-neighbour agreement
(the built-in ``nn_agreement`` metric with a limit, ``--minilm-nn``, default 0.96), i.e. a margin
over the issue's 0.99 / 0.95 so the held-out figures pass too (NN agreement over 500 sentences moves
by about +-0.01 between sentence sets: sqrt(0.95 * 0.05 / 500)). The chosen ``.onnxc`` and the
search's best uniform seed are then measured once on the 500 test sentences (``sentences.npz``) with
``common.embedding_metrics``. A candidate costs about 5-8 s to build and 14 s to run on 500
sentences (one thread), so stage 1 uses a small grid (``--minilm-sparsities``, ``--minilm-bits``)
on 64 sentences and stages 2-3 few trials (``--minilm-trials``). ``--minilm-granularities``
(e.g. ``group,tensor``) adds codebook granularities to the space, ``--minilm-calibration``
builds every candidate with one-shot GPTQ calibrated on the validation sentences (the word
embedding: k-means weighted by lookup counts). Results go under ``minilm`` in search.json; the
digit entries already there are kept, the replaced MiniLM run under ``previous_run``, and a
``probes`` table (uniform settings measured on validation by hand) is carried over.
``--minilm-uniform-grid 6,7,8`` runs only MiniLM's uniform baseline (one bit width everywhere,
candidates built as the search builds them, the smallest passing the validation gates measured on
the test sentences) and adds it, with the search-vs-uniform check, to the existing entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MODELS_DIR,
    RESULTS_DIR,
    digits_accuracy,
    embedding_metrics,
    embeddings,
    environment,
    md_table,
    minilm_case,
    write_results,
)

import onnxcompress as oc  # noqa: E402
from onnxcompress.search import bayes  # noqa: E402
from onnxcompress.search.api import CalibratedHooks  # noqa: E402
from onnxcompress.search.candidates import Candidates  # noqa: E402
from onnxcompress.search.metrics import Metric  # noqa: E402
from onnxcompress.search.space import DEFAULT_SPARSITIES, Choice, Plan, base_config  # noqa: E402

VAL = MODELS_DIR / "digits_val.npz"
CALIB = MODELS_DIR / "digits_calib.npz"
TARGETS = {"lenet_300_100": 40.0, "lenet5": 50.0, "resnet_digits": 16.0}
GRIDS = {  # stage-1 grids: the residual CNN has 10 weights, so a coarser one
    "lenet_300_100": (DEFAULT_SPARSITIES, (2, 3, 4, 5, 6)),
    "lenet5": (DEFAULT_SPARSITIES, (2, 3, 4, 5, 6)),
    "resnet_digits": ((0.0, 0.7, 0.9), (3, 5)),
}


def test_figures(onnx_bytes: bytes, size: int, original: int, fp32: dict[str, float]) -> dict[str, Any]:
    acc = digits_accuracy(onnx_bytes, threads=1)
    drops = {k: round(100 * (fp32[k] - v), 3) for k, v in acc.items()}
    return {
        "bytes": size,
        "ratio": round(original / size, 2),
        "accuracy": acc,
        "drop_pts": drops,
        "within_1pt": all(d <= 1.0 for d in drops.values()),
    }


#: gates compared after the search (post hoc, over the plans this search evaluated): validation
#: accuracy drop (points) and top-1 agreement. The benchmark's default (0.5, 0.99) is chosen on
#: validation grounds alone: at most 10 of 1000 validation answers may change, so a plan whose
#: flip rate carries over to new data loses at most 1 point anywhere (the target), whatever the
#: direction of the flips; the accuracy drop alone lets flips cancel on validation.
GATE_VARIANTS = ((0.5, 0.99), (0.5, 0.0), (1.0, 0.0), (1.0, 0.98))


def gate_variants(cands: Candidates, records: list[bayes.TrialRecord], original: int,
                  fp32: dict[str, float]) -> list[dict[str, Any]]:  # fmt: skip
    """For each variant gate, the smallest evaluated plan of the search that passes it on the
    validation data, and what that plan does on the test sets (reporting only: the search chose
    with the benchmark's gate; a search run with another gate would explore differently)."""
    from onnxcompress.sessions import make_session

    ref_pred = np.argmax(cands.reference_outputs[0], 1)
    labels = cands.labels
    assert labels is not None
    ref_acc = float(np.mean(ref_pred == labels))
    seen: dict[Any, tuple[float, float, bytes, int]] = {}
    out = []
    evaluated = sorted(
        (t for t in records if t.metric is not None and t.size), key=lambda t: (t.size, t.number)
    )
    for drop, agree in GATE_VARIANTS:
        found = None
        for t in evaluated:
            if 100 * (ref_acc - float(t.metric or 0)) > drop + 1e-9:
                continue  # the recorded validation accuracy already fails the variant
            key = t.plan.key()
            if key not in seen:
                built = cands.build(t.plan)
                sess = make_session(built.onnx_bytes, threads=1)
                pred = np.argmax(sess.run(cands.output_names, cands.data)[0], 1)
                seen[key] = (
                    float(np.mean(pred == labels)),
                    float(np.mean(pred == ref_pred)),
                    built.onnx_bytes,
                    built.size,
                )
            acc, agr, onnx_bytes, size = seen[key]
            if 100 * (ref_acc - acc) <= drop + 1e-9 and agr >= agree:
                found = {"trial": t.number, "val_drop_pts": round(100 * (ref_acc - acc), 2), "val_agreement": agr,
                         "plan": t.plan.describe(), **test_figures(onnx_bytes, size, original, fp32)}  # fmt: skip
                break
        out.append({"gate": {"max_accuracy_drop": drop, "min_agreement": agree}, "smallest_passing": found})
    return out


def structured_search(args: argparse.Namespace) -> oc.StructuredSearch | None:
    """``--structured-ratios``: channel ratios as one more searched dimension (None: not asked)."""
    if not args.structured_ratios:
        return None
    from onnxcompress.structured.config import StructuredConfig

    ratios = tuple(float(x) for x in args.structured_ratios.split(","))
    cfg = StructuredConfig(allocation=args.structured_allocation, criterion=args.structured_criterion)
    return oc.StructuredSearch(ratios, cfg)


def smallest_passing(records: list[bayes.TrialRecord]) -> bayes.TrialRecord | None:
    ok = [t for t in records if t.passed and t.size is not None]
    return min(ok, key=lambda t: (t.size, t.number)) if ok else None


def run_uniform(cands: Candidates, evals: int) -> tuple[Plan | None, int, dict[str, Any]]:
    bits = list(range(2, 9))
    n_p = max(2, round(evals / len(bits)))
    sparsities = np.round(np.linspace(0.0, 0.97, n_p), 2)
    best: tuple[int, Plan] | None = None
    start = cands.evaluations
    for b in bits:
        for p in sparsities:
            plan = Plan({layer.name: Choice(float(p), b) for layer in cands.layers})
            built = cands.build(plan)
            if best is not None and built.size >= best[0]:
                continue  # cannot be the smallest passing one: no need to run it
            if cands.measure(built).evaluation.passed:
                best = (built.size, plan)
    return (
        (best[1] if best else None),
        cands.evaluations - start,
        {"bits": bits, "sparsities": sparsities.tolist()},
    )


def run_random(cands: Candidates, evals: int, seed: int) -> tuple[Plan | None, int]:
    space = bayes.Space(tuple(layer.name for layer in cands.layers))
    goal = bayes.Goal("gates", "max", quick_samples=cands.samples // 4)
    spec = bayes.StudySpec(None, "random", "random", seed, 100000, None, 10, goal, space)
    study = bayes.open_study(spec, seed=seed)
    start = cands.evaluations
    # E model runs at most, and E trials at most: a trial whose exact size is not below the best
    # passing one stops before the model runs (as in the search), so evaluations alone would let
    # random search build plans forever
    spec.trials = evals
    bayes.optimize(study, bayes.Objective(cands, space, goal), spec, max_evaluations=evals)
    best = smallest_passing(bayes.records(study))
    return (best.plan if best else None), cands.evaluations - start


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path = MODELS_DIR / f"{name}.onnx"
    fp32 = digits_accuracy(str(path), threads=1)
    gates = oc.Gates(max_accuracy_drop=args.gate, min_agreement=args.min_agreement)
    sparsities, bits = GRIDS[name]
    exact = bool(args.calibration) and args.calibration_mode == "sequential"
    print(f"== {name}: searching ({args.trials} trials)", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    res = oc.search(
        str(path), str(VAL), output=workdir / f"{name}.onnxc", gates=gates, metric="accuracy",
        trials=args.trials, seed=args.seed, storage=None, sparsities=sparsities, bits=bits,
        calibration_data=str(CALIB) if args.calibration else None, calibration_sequential=exact,
        uniform_evaluations=args.uniform_evaluations,
        bias_correction=exact, structured=structured_search(args),
    )  # fmt: skip
    search_s = time.perf_counter() - t0
    total_evals = res.sensitivity_evaluations + res.evaluations
    budget = min(total_evals, args.baseline_evals) if args.baseline_evals else total_evals
    # the baselines build their candidates the way the search did (calibrated ones with --calibration:
    # the same one-shot calibration, so uniform and random get the same lever as the search)
    hooks = CalibratedHooks(str(CALIB), sequential=exact, bias_correction=exact) if args.calibration else None
    cands = Candidates(
        str(path), str(VAL), base=base_config(), metric=Metric("accuracy"), gates=gates, container=True,
        hook_factory=hooks,
    )  # fmt: skip
    original = cands.original_size
    # the search's plans apply to the structurally pruned model it chose (if any): built on that
    # model, measured against the original, sized against the original file
    searched = cands
    if res.pruned_model is not None:
        searched = Candidates(
            res.pruned_model, str(VAL), base=base_config(), metric=Metric("accuracy"), gates=gates, container=True,
            hook_factory=CalibratedHooks(str(CALIB), sequential=exact, bias_correction=exact) if args.calibration else None,
            reference=str(path),
        )  # fmt: skip
        assert searched.original_size == original
    rows: dict[str, Any] = {}

    def record(label: str, plan: Plan | None, evals: int, extra: dict[str, Any] | None = None,
               on: Candidates | None = None) -> None:  # fmt: skip
        c = on or cands
        if plan is None:
            rows[label] = {"found": False, "evaluations": evals, **(extra or {})}
            return
        built = c.build(plan)
        val = c.measure(built).evaluation
        rows[label] = {
            "found": True, "evaluations": evals, "plan": plan.describe(), "val_accuracy": val.metric,
            **test_figures(built.onnx_bytes, built.size, original, fp32), **(extra or {}),
        }  # fmt: skip

    print(f"== {name}: uniform grid (~{budget} evaluations)", file=sys.stderr, flush=True)
    t = time.perf_counter()
    plan, n, grid = run_uniform(cands, budget)
    record("uniform", plan, n, {"grid": grid, "seconds": round(time.perf_counter() - t, 1)})
    print(f"== {name}: random search ({budget} evaluations)", file=sys.stderr, flush=True)
    t = time.perf_counter()
    plan, n = run_random(cands, budget, args.seed)
    record("random", plan, n, {"seconds": round(time.perf_counter() - t, 1)})
    stage2_trials = [t for t in res.trials if t.stage == "stage2"]
    record(
        "stage2", res.stage2.plan if res.stage2 else None, res.sensitivity_evaluations + len(stage2_trials),
        on=searched,
    )  # fmt: skip
    uni_trials = [t for t in res.trials if t.stage == "uniform"]
    record(
        "uniform_seeds", res.uniform.plan if res.uniform else None,
        sum(1 for t in uni_trials if t.samples), {"trials": len(uni_trials)}, on=searched,
    )  # fmt: skip
    record("stage3", res.best.plan if res.best else None, total_evals, on=searched)
    rows["stage3"]["seconds"] = round(search_s, 1)
    rows["stage3"]["seconds_by_stage"] = {k: round(v, 1) for k, v in res.seconds.items()}
    rows["stage3"]["trials"] = len(res.trials)
    print(f"== {name}: gate variants (post hoc, over the search's trials)", file=sys.stderr, flush=True)
    variants = gate_variants(searched, res.trials, original, fp32)
    s3, uni = rows["stage3"], rows["uniform"]
    beats = None
    if s3.get("found") and uni.get("found"):
        fid_ok = all(s3["drop_pts"][k] <= max(uni["drop_pts"][k], 1.0) for k in s3["drop_pts"])
        beats = {"size_factor": round(uni["bytes"] / s3["bytes"], 2), "fidelity_ok": fid_ok,
                 "met": uni["bytes"] / s3["bytes"] >= 1.3 and fid_ok}  # fmt: skip
    target = TARGETS[name]
    return {
        "model": name,
        "fp32_bytes": original,
        "fp32_accuracy": fp32,
        "gate_val_drop_pts": args.gate,
        "gate_val_min_agreement": args.min_agreement,
        "evaluations_budget": budget,
        "search_evaluations": {
            "stage1": res.sensitivity_evaluations,
            "stages23": res.evaluations,
            "total": total_evals,
        },
        "methods": rows,
        "target": {
            "ratio": target,
            "met": bool(s3.get("found") and s3["ratio"] >= target and s3["within_1pt"]),
            "ratio_reached": s3.get("ratio"),
        },  # fmt: skip
        "beats_uniform": beats,
        "gate_variants": variants,
        "search_seconds": round(search_s, 1),
        "structured": res.structured,
        "structured_note": None if res.structured is None else (
            "the search tried these channel ratios (global/uniform allocation as in structured.config) and "
            "searched each passing pruned model per weight; the uniform and random baselines are unstructured "
            "(built on the original model); sizes and gates against the original"
        ),
        "calibration": bool(args.calibration),
        "calibration_mode": args.calibration_mode if args.calibration else None,
        "run_args": {k: v for k, v in vars(args).items() if k != "out"},
    }


MINILM_TARGET = 8.0


def _minilm_gates(args: argparse.Namespace) -> tuple[oc.Gates, Metric]:
    """The MiniLM search's validation gates: mean cosine and nearest-neighbour agreement."""
    return oc.Gates(min_cosine=args.minilm_cosine), Metric("nn_agreement", limit=args.minilm_nn)


def _minilm_candidates(args: argparse.Namespace, model: Path, val: Path) -> Candidates:
    """Candidates built and gated as the MiniLM search builds them (one-shot calibration on the
    validation sentences when ``--minilm-calibration``)."""
    gates, metric = _minilm_gates(args)
    hooks = CalibratedHooks(str(val)) if args.minilm_calibration else None
    return Candidates(str(model), str(val), base=base_config(), metric=metric, gates=gates, container=True,
                      hook_factory=hooks)  # fmt: skip


def bench_minilm(args: argparse.Namespace, workdir: Path) -> dict[str, Any] | str:
    """The MiniLM search (validation sentences only), its plan measured on the test sentences; or
    why it was skipped."""
    case, why = minilm_case(reference=True)
    if case is None:
        return why or "MiniLM unavailable"
    path = case.path
    val = path.parent / "val_sentences.npz"
    if not val.exists():
        return f"MiniLM validation sentences missing ({val}); rerun models/export_minilm.py"
    test_inputs, reference = case.extra["inputs"], case.extra["reference"]
    gates, metric = _minilm_gates(args)
    sparsities = tuple(float(x) for x in args.minilm_sparsities.split(","))
    bits = tuple(int(x) for x in args.minilm_bits.split(","))
    granularities = tuple(args.minilm_granularities.split(","))
    # calibration (GPTQ onto the codebooks, one-shot, memoised per weight and setting) on the
    # validation sentences only; the test sentences never reach the search
    calibration = str(val) if args.minilm_calibration else None
    print(f"== minilm: searching ({args.minilm_trials} trials; stage-1 grid p {sparsities} x b {bits} x g "
          f"{granularities}; calibration {'validation' if calibration else 'none'})",
          file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.perf_counter()
    res = oc.search(
        str(path), str(val), output=workdir / "minilm.onnxc", gates=gates, metric=metric,
        trials=args.minilm_trials, seed=args.seed, storage=None, sparsities=sparsities, bits=bits,
        granularities=granularities, calibration_data=calibration,
        sensitivity_samples=args.minilm_sensitivity_samples, stage2_evaluations=args.minilm_stage2,
        uniform_evaluations=args.minilm_uniform,
    )  # fmt: skip
    search_s = time.perf_counter() - t0
    load = [round(x, 2) for x in os.getloadavg()]
    # the plans are rebuilt the way the search built them (the same one-shot calibration)
    cands = _minilm_candidates(args, path, val)
    original = cands.original_size
    rows: dict[str, Any] = {}
    for label, rec in (("stage2", res.stage2), ("uniform_seeds", res.uniform), ("stage3", res.best)):
        if rec is None:
            rows[label] = {"found": False}
            continue
        built = cands.build(rec.plan)
        v = cands.measure(built).evaluation
        t = embedding_metrics(embeddings(built.onnx_bytes, test_inputs, threads=1), reference)
        rows[label] = {
            "found": True, "bytes": built.size, "ratio": round(original / built.size, 2),
            "val_cosine": round(min(o.mean_cosine for o in v.outputs), 5), "val_nn_agreement": round(v.metric, 4),
            "test_cosine": round(t["cosine"], 5), "test_cosine_min": round(t["cosine_min"], 5),
            "test_nn_agreement": round(t["nn_agreement"], 4),
            "test_ok": t["cosine"] >= 0.99 and t["nn_agreement"] >= 0.95, "plan": rec.plan.describe(),
        }  # fmt: skip
    s3 = rows["stage3"]
    return {
        "model": "minilm",
        "fp32_bytes": original,
        "gates_val": {"min_cosine": args.minilm_cosine, "min_nn_agreement": args.minilm_nn},
        "criterion_test": {"min_cosine": 0.99, "min_nn_agreement": 0.95},
        "stage1_grid": {
            "sparsities": sparsities,
            "bits": bits,
            "granularities": granularities,
            "samples": args.minilm_sensitivity_samples,
        },
        "calibration": "one-shot GPTQ on the 500 validation sentences (256 used)" if calibration else None,
        "search_evaluations": {"stage1": res.sensitivity_evaluations, "stages23": res.evaluations},
        "trials": len(res.trials),
        "methods": rows,
        "target": {
            "ratio": MINILM_TARGET,
            "met": bool(s3.get("found") and s3["ratio"] >= MINILM_TARGET and s3["test_ok"]),
            "ratio_reached": s3.get("ratio"),
        },
        "search_seconds": round(search_s, 1),
        "seconds_by_stage": {k: round(v, 1) for k, v in res.seconds.items()},
        "closest": None if res.passed or res.closest is None else res.summary(),
        "load_average": load,
    }


def record_minilm(entry: dict[str, Any], out: Path | None) -> None:
    """Put the MiniLM entry into search.json next to what is there (the digit entries are kept)."""
    path = out or RESULTS_DIR / "search.json"
    data = json.loads(path.read_text()) if path.exists() else {"benchmark": "search"}
    # methods as rows (one table in docs/benchmarks.md rather than a list of keys)
    methods = entry.get("methods")
    if isinstance(methods, dict):
        entry = {**entry, "methods": [{"method": k, **v} for k, v in methods.items()]}
    previous = data.get("minilm")
    kept: dict[str, Any] = {}
    if isinstance(previous, dict):  # the run this one replaces stays, one level deep; probes stay as they are
        kept["previous_run"] = {k: v for k, v in previous.items() if k not in ("previous_run", "probes")}
        if "probes" in previous:
            kept["probes"] = previous["probes"]
    data["minilm"] = {"environment": environment(), **entry, **kept}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {path} (minilm)", file=sys.stderr)


def minilm_uniform_grid(args: argparse.Namespace) -> dict[str, Any] | str:
    """The best uniform MiniLM setting, as the issue's baseline: one bit width (no pruning, one
    codebook per tensor) for every weight, candidates built exactly as the search builds them
    (one-shot GPTQ on the validation sentences); the smallest that passes the search's validation
    gates is measured once on the test sentences. Sizes grow with the bit width, so the grid is
    walked upwards and stops at the first pass."""
    case, why = minilm_case(reference=True)
    if case is None:
        return why or "MiniLM unavailable"
    val = case.path.parent / "val_sentences.npz"
    if not val.exists():
        return f"MiniLM validation sentences missing ({val}); rerun models/export_minilm.py"
    cands = _minilm_candidates(args, case.path, val)
    tried: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    t0 = time.perf_counter()
    for b in sorted(int(x) for x in args.minilm_uniform_grid.split(",")):
        plan = Plan({layer.name: Choice(0.0, b) for layer in cands.layers})
        built = cands.build(plan)
        m = cands.measure(built)
        row = {"bits": b, "bytes": built.size, "ratio": round(cands.original_size / built.size, 2),
               "val_cosine": round(min(o.mean_cosine for o in m.evaluation.outputs), 5),
               "val_nn_agreement": round(m.evaluation.metric, 4), "passed": m.evaluation.passed}  # fmt: skip
        print(json.dumps(row), file=sys.stderr, flush=True)
        tried.append(row)
        if m.evaluation.passed:
            t = embedding_metrics(embeddings(built.onnx_bytes, case.extra["inputs"], threads=1), case.extra["reference"])
            best = {**row, "test_cosine": round(t["cosine"], 5), "test_nn_agreement": round(t["nn_agreement"], 4),
                    "test_ok": t["cosine"] >= 0.99 and t["nn_agreement"] >= 0.95}  # fmt: skip
            break
        cands.forget()
    return {"what": "uniform bits (p 0, per-tensor codebooks), calibrated like the search's candidates; smallest "
            "passing the validation gates, measured on the test sentences", "tried": tried, "best": best,
            "evaluations": len(tried), "seconds": round(time.perf_counter() - t0, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def record_minilm_uniform(grid: dict[str, Any], out: Path | None) -> None:
    """Put the uniform baseline into the existing MiniLM entry, with the search-vs-uniform check."""
    path = out or RESULTS_DIR / "search.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    entry = data.get("minilm")
    if not isinstance(entry, dict) or "methods" not in entry:
        raise SystemExit(f"{path} has no MiniLM search entry: run --models minilm first")
    entry["uniform_grid"] = grid
    s3 = next((m for m in entry["methods"] if m["method"] == "stage3"), None)
    best = grid["best"]
    if best is not None and s3 is not None and s3.get("found"):
        entry["beats_uniform"] = {
            "size_factor": round(s3["ratio"] / best["ratio"], 2),
            # as for the digit models: as good as the uniform plan, or within the criterion
            "fidelity_ok": s3["test_cosine"] >= min(best["test_cosine"], 0.99)
            and s3["test_nn_agreement"] >= min(best["test_nn_agreement"], 0.95),
        }  # fmt: skip
        entry["beats_uniform"]["met"] = entry["beats_uniform"]["size_factor"] >= 1.3 and entry["beats_uniform"]["fidelity_ok"]
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path} (minilm.uniform_grid)", file=sys.stderr)


def merged(previous: dict[str, Any], results: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """search.json with this run's models in place of their earlier entries (each earlier entry
    kept under ``previous_run``), the other models' entries, the MiniLM entry, the note and the
    earlier runs' arguments as they were."""
    mine = {r["model"]: r for r in results}
    envs = dict(previous.get("environments_by_model") or {})
    models = []
    for old in previous.get("models", []):
        new = mine.pop(old.get("model"), None)
        if new is None:
            models.append(old)
        else:
            before = {k: v for k, v in old.items() if k != "previous_run"}
            if old.get("model") in envs:
                before["environment"] = envs[old["model"]]
            models.append({**new, "previous_run": before})
    models.extend(mine.values())
    for r in results:
        envs[r["model"]] = environment()
    run_args = vars(args) | {"out": None}
    old_args = previous.get("args")
    if isinstance(old_args, dict) and old_args and all(isinstance(v, dict) for v in old_args.values()):
        all_args = {**old_args, f"run of {args.models}": run_args}  # one set of arguments per run
    else:
        all_args = {f"run of {args.models}": run_args} if previous.get("models") else run_args
    note = previous.get("note") or "machine shared with other jobs; timings rough"
    kept = {k: v for k, v in previous.items()
            if k not in ("benchmark", "environment", "models", "args", "note", "environments_by_model")}  # fmt: skip
    out: dict[str, Any] = {"note": note, "args": all_args, "models": models, **kept}
    if previous.get("environments_by_model"):  # one environment per model: the top-level one stays as it was
        out = {"environment": previous.get("environment"), **out, "environments_by_model": envs}
    return out


def _pts(v: Any) -> str:
    return f"{v:+.2f}" if isinstance(v, (int, float)) else "-"


def model_table(r: dict[str, Any]) -> str:
    """One digit model's methods side by side (what the run prints and docs/benchmarks.md shows)."""
    rows = []
    for label, m in r["methods"].items():
        if not m.get("found"):
            rows.append([label, m.get("evaluations", "-"), "none passed", "", "", "", "", ""])
            continue
        va = m.get("val_accuracy")
        rows.append([label, m.get("evaluations", "-"), f"{m['bytes']:,}", f"{m['ratio']:.1f}x",
                     f"{va:.3f}" if isinstance(va, (int, float)) else "-", _pts(m["drop_pts"]["held-out"]),
                     _pts(m["drop_pts"]["augmented"]), "yes" if m.get("within_1pt") else "no"])  # fmt: skip
    return md_table(
        ["method", "evaluations", ".onnxc bytes", "ratio", "val acc.", "drop held-out (pts)",
         "drop augmented (pts)", "within 1 pt"], rows,
    )  # fmt: skip


def _command(args: dict[str, Any]) -> str:
    flags = []
    for k, v in args.items():
        if k == "out" or k.startswith("minilm") or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        flags.append(flag if v is True else f"{flag} {v}")
    return "python benchmarks/search.py " + " ".join(flags)


def render(data: dict[str, Any]) -> str:
    """``search.json`` as Markdown: per model, the methods at the same budget, the target and the
    comparison with the best uniform setting; MiniLM's run, its uniform baseline and its probes."""
    out = [str(data.get("note", ""))]
    for r in data.get("models", []):
        t, bu = r["target"], r["beats_uniform"]
        acc = r["fp32_accuracy"]
        out += [
            f"\n### {r['model']}: target {t['ratio']:g}x {'met' if t['met'] else 'missed'} "
            f"({t['ratio_reached']:g}x)\n",
            f"fp32 {r['fp32_bytes']:,} B, test accuracy {acc['held-out']:.2%} held-out / {acc['augmented']:.2%} "
            f"augmented; validation gates: drop <= {r['gate_val_drop_pts']:g} pts and agreement >= "
            f"{r['gate_val_min_agreement']:g}; search {r['search_seconds']:g} s, "
            f"{r['search_evaluations']['total']} model evaluations.\n",
            model_table(r),
            f"\nSearch against the best uniform setting: {bu['size_factor']:g}x smaller, fidelity "
            f"{'as good' if bu['fidelity_ok'] else 'worse'}: {'met' if bu['met'] else '**missed**'} (>= 1.3x).",
        ]
        st = r.get("structured")
        if st:
            out.append(f"\nStructured ratios searched (chosen {st['chosen_ratio']:g}, {st['config']['allocation']} "
                       f"allocation, {st['config']['criterion']}):\n")  # fmt: skip
            out.append(md_table(
                ["channel ratio", "pruned alone passes", "smallest passing", "ratio", "val metric", "seconds"],
                [[f"{x['ratio']:g}", "yes" if x.get("passed") else "no",
                  f"{x['best_bytes']:,}" if x.get("best_bytes") else "-",
                  f"{x['best_ratio']:.1f}x" if x.get("best_ratio") else "-",
                  f"{x['best_metric']:.3f}" if isinstance(x.get("best_metric"), (int, float)) else "-",
                  x.get("seconds", "-")] for x in st.get("ratios", [])],
            ))  # fmt: skip
        if r.get("run_args"):
            out.append(f"\nRerun: `{_command(r['run_args'])}`")
    m = data.get("minilm")
    if isinstance(m, dict):
        t, bu = m["target"], m["beats_uniform"]
        gv, ct = m["gates_val"], m["criterion_test"]
        out += [
            f"\n### minilm: target {t['ratio']:g}x {'met' if t['met'] else '**missed**'} ({t['ratio_reached']:g}x)\n",
            f"fp32 {m['fp32_bytes']:,} B. Validation gates: cosine >= {gv['min_cosine']:g}, NN agreement >= "
            f"{gv['min_nn_agreement']:g}; test criterion: cosine >= {ct['min_cosine']:g}, NN >= "
            f"{ct['min_nn_agreement']:g}. Calibration: {m.get('calibration')}. Grid {m.get('stage1_grid')}; "
            f"{m.get('trials')} trials; {m.get('search_seconds'):g} s.\n",
            md_table(
                ["method", ".onnxc bytes", "ratio", "val cos", "val NN", "test cos", "test NN", "test passes"],
                [[x["method"], f"{x['bytes']:,}", f"{x['ratio']:.2f}x", f"{x['val_cosine']:.4f}",
                  f"{x['val_nn_agreement']:.3f}", f"{x['test_cosine']:.4f}", f"{x['test_nn_agreement']:.3f}",
                  "yes" if x.get("test_ok") else "no"] if x.get("found") else [x["method"], "none passed"] + [""] * 6
                 for x in m["methods"]],
            ),
            f"\n{t.get('limit', '')}",
        ]  # fmt: skip
        ug = m.get("uniform_grid")
        if isinstance(ug, dict) and ug.get("best"):
            b = ug["best"]
            out.append(
                f"\nUniform baseline ({ug['what']}): "
                + "; ".join(f"{x['bits']}-bit {x['ratio']:g}x val cos {x['val_cosine']:.4f} NN "
                            f"{x['val_nn_agreement']:.3f} {'passes' if x['passed'] else 'fails'}" for x in ug["tried"])
                + f". Best: {b['bits']}-bit, test cos {b['test_cosine']:.4f} NN {b['test_nn_agreement']:.3f}. "
                f"Search against it: {bu['size_factor']:g}x smaller, fidelity "
                f"{'as good' if bu['fidelity_ok'] else 'worse'}: {'met' if bu['met'] else '**missed**'} (>= 1.3x)."
            )  # fmt: skip
        probes = m.get("probes")
        if isinstance(probes, dict) and probes.get("rows"):
            out.append(f"\nValidation probes ({probes.get('note')}):\n")
            out.append(md_table(
                ["setting", "calibration", "bytes", "ratio", "val cos", "val NN"],
                [[x["setting"], x["calibration"], f"{x['bytes']:,}", f"{x['ratio']:.2f}x", f"{x['val_cosine']:.4f}",
                  f"{x['val_nn_agreement']:.3f}"] for x in probes["rows"]],
            ))  # fmt: skip
            out.append(f"\n{probes.get('conclusion', '')}")
        if m.get("command"):
            cmd, _, aside = str(m["command"]).partition(" (")
            out.append(f"\nRerun: `{cmd}`" + (f" ({aside}" if aside else ""))
    if data.get("one_shot_candidates_run"):
        out.append("\nThe digit models' previous run (one-shot calibrated candidates) is kept in the results file "
                   "under `one_shot_candidates_run`.")  # fmt: skip
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="lenet_300_100,lenet5,resnet_digits")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--gate", type=float, default=0.5, help="validation accuracy drop allowed (points)")
    ap.add_argument(
        "--min-agreement", type=float, default=0.99,
        help="validation top-1 agreement with fp32 required too (default 0.99; 0 = accuracy gate alone)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-evals", type=int, help="cap on the baselines' model evaluations")
    ap.add_argument(
        "--calibration", action="store_true", help="search with calibrated candidates (digits_calib.npz)"
    )
    ap.add_argument(
        "--calibration-mode", choices=("oneshot", "sequential"), default="sequential",
        help="with --calibration: 'sequential' (default) calibrates every stage-2/3 candidate as compress "
        "does, sequentially with bias correction; 'oneshot' uses the memoised one-shot cache (faster)",
    )  # fmt: skip
    ap.add_argument(
        "--uniform-evaluations", type=int, default=8, help="model runs on uniform seeds (0: none)"
    )
    ap.add_argument(
        "--structured-ratios", metavar="LIST",
        help="channel ratios searched as one more dimension (e.g. 0,0.5,0.6,0.7): each ratio's structurally "
        "pruned model (refit on digits_calib.npz with --calibration) is searched per weight, --trials each; "
        "the baselines stay unstructured",
    )  # fmt: skip
    ap.add_argument("--structured-allocation", choices=("uniform", "global"), default="global")
    ap.add_argument("--structured-criterion", default="obs", help="structured criterion (default obs)")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/search.json)")
    ap.add_argument("--minilm-trials", type=int, default=20, help="MiniLM: trials of stages 2-3")
    ap.add_argument("--minilm-cosine", type=float, default=0.992, help="MiniLM: validation cosine gate")
    ap.add_argument("--minilm-nn", type=float, default=0.96, help="MiniLM: validation NN-agreement gate")
    # the MiniLM defaults: the second run's space (no pruning: the first run's plans kept p 0 on every weight)
    ap.add_argument("--minilm-sparsities", default="0", help="MiniLM: stage-1 sparsity grid")
    ap.add_argument("--minilm-bits", default="4,6", help="MiniLM: stage-1 bits grid")
    ap.add_argument(
        "--minilm-granularities", default="group,tensor", help="MiniLM: codebook granularities searched"
    )
    ap.add_argument("--minilm-calibration", action=argparse.BooleanOptionalAction, default=True,
                    help="MiniLM: calibrate candidates (GPTQ, one-shot) on the validation sentences")  # fmt: skip
    ap.add_argument("--minilm-sensitivity-samples", type=int, default=64, help="MiniLM: stage-1 sentences")
    ap.add_argument("--minilm-stage2", type=int, default=8, help="MiniLM: stage-2 model runs")
    ap.add_argument("--minilm-uniform", type=int, default=4, help="MiniLM: uniform-seed model runs")
    ap.add_argument("--minilm-uniform-grid", metavar="BITS",
                    help="only the MiniLM uniform baseline over these bit widths (e.g. 6,7,8), merged into "
                    "the existing minilm entry")  # fmt: skip
    args = ap.parse_args()
    if args.minilm_uniform_grid:
        grid = minilm_uniform_grid(args)
        if isinstance(grid, str):
            print(f"minilm: skipped ({grid})", file=sys.stderr)
            return 0
        print(json.dumps(grid, indent=2))
        record_minilm_uniform(grid, args.out)
        return 0
    results = []
    # the stage-1 tables are cached here (keyed by model, data and grid), so a rerun skips stage 1
    cache = Path(tempfile.gettempdir()) / "onnxcompress-search-bench"
    cache.mkdir(exist_ok=True)
    results_path = args.out or RESULTS_DIR / "search.json"
    for name in args.models.split(","):
        if name == "minilm":
            entry = bench_minilm(args, cache)
            if isinstance(entry, str):
                print(f"minilm: skipped ({entry})", file=sys.stderr)
                continue
            print(json.dumps(entry, indent=2))
            record_minilm(entry, args.out)
            continue
        results.append(bench_model(name, args, cache))
        r = results[-1]
        print(f"\n{r['model']} (fp32 {r['fp32_bytes']:,} B; target {r['target']['ratio']:g}x: "
              f"{'met' if r['target']['met'] else 'missed'}; search {r['search_seconds']} s)")  # fmt: skip
        print(model_table(r))
        print(f"search vs best uniform: {r['beats_uniform']}", flush=True)
        previous = json.loads(results_path.read_text()) if results_path.exists() else {}
        write_results("search", merged(previous, results, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
