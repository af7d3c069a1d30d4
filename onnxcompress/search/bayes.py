"""Stage 3: CLIP-Q's Bayesian optimisation of the per-weight (sparsity, bits[, granularity]).

Each Optuna trial proposes a plan, compresses the real model with it and evaluates the result in
onnxruntime on the validation data. The sampler is TPE (``tpe``, multivariate, with the gates as
constraints), ``gp`` (Gaussian process) or ``random`` (the baseline). Trials that cannot win stop
early, before the model runs: in the default objective a plan whose exact file size is not below
the smallest passing one found so far, with a size target a plan above it; and a plan whose metric
on the first quarter of the data misses the gates by a wide margin stops there.

Every trial records what it measured in its user attributes (size, metric, gate result, plan), so
any storage (SQLite, PostgreSQL, a journal file) holds the whole search and a rerun resumes it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from onnxcompress.search.candidates import Candidates, cost_text
from onnxcompress.search.space import Choice, Plan

Mode = Literal["gates", "target", "pareto"]
KEEP_CODE = 9  # the bits parameter's value that means "leave the weight as fp32"
HOPELESS_SHORTFALL = 3.0  # ~3 accuracy points / 0.03 agreement short on the quick subset


@dataclass(frozen=True)
class Space:
    """Per weight: sparsity in [0, max_sparsity] (step 0.01), bits in [min_bits, 8] or fp32.

    With ``runtime_bits`` (the search's formats include ``runtime``), each of ``runtime_layers``
    (the weights stage 1 could build in that format) also gets a format parameter ``:f`` and a
    runtime bit width ``:rb``; a runtime trial ignores ``:p`` (and ``:b``, except for its keep
    code). Every parameter is suggested on every trial, so the space stays static and the
    multivariate TPE models all of them jointly. Without runtime bits the parameters (and so the
    studies) are exactly those of a codebook-only search.
    """

    layers: tuple[str, ...]
    max_sparsity: float = 0.99
    min_bits: int = 2
    granularities: tuple[str, ...] = ("tensor",)
    allow_keep: bool = True
    formats: tuple[str, ...] = ("codebook",)
    runtime_bits: tuple[int, ...] = ()
    runtime_layers: tuple[str, ...] = ()

    def _formats(self, name: str) -> tuple[str, ...]:
        """The formats ``name`` may take in this space."""
        if self.runtime_bits and name in self.runtime_layers:
            return self.formats
        return tuple(f for f in self.formats if f != "runtime") or ("codebook",)

    def suggest(self, trial: Any) -> Plan:
        choices = {}
        for name in self.layers:
            b = trial.suggest_int(f"{name}:b", self.min_bits, KEEP_CODE if self.allow_keep else 8)
            p = trial.suggest_float(f"{name}:p", 0.0, self.max_sparsity, step=0.01)
            g = (
                trial.suggest_categorical(f"{name}:g", list(self.granularities))
                if len(self.granularities) > 1
                else self.granularities[0]
            )
            formats = self._formats(name)
            fmt, rb = formats[0], 0
            if "runtime" in formats:
                fmt = trial.suggest_categorical(f"{name}:f", list(formats)) if len(formats) > 1 else fmt
                rb = trial.suggest_categorical(f"{name}:rb", list(self.runtime_bits))
            if b == KEEP_CODE:
                choices[name] = Choice.keep()
            elif fmt == "runtime":
                choices[name] = Choice.runtime(rb)
            else:
                choices[name] = Choice(round(p, 2), b, g)
        return Plan(choices)

    def params(self, plan: Plan) -> dict[str, Any]:
        """The trial parameters that reproduce ``plan`` (for enqueue_trial: warm starts)."""
        out: dict[str, Any] = {}
        for name in self.layers:
            c = plan.choices.get(name, Choice.keep())
            out[f"{name}:b"] = KEEP_CODE if c.kept else max(self.min_bits, c.bits)
            out[f"{name}:p"] = min(round(c.sparsity, 2), self.max_sparsity)
            if len(self.granularities) > 1:
                out[f"{name}:g"] = (
                    c.granularity if c.granularity in self.granularities else self.granularities[0]
                )
            formats = self._formats(name)
            if "runtime" in formats:
                if len(formats) > 1:
                    out[f"{name}:f"] = c.format if c.format in formats else formats[0]
                rt = c.format == "runtime" and c.bits in self.runtime_bits
                out[f"{name}:rb"] = c.bits if rt else self.runtime_bits[0]
        return out


@dataclass(frozen=True)
class Goal:
    """What the study optimises: ``gates`` (smallest passing), ``target`` (best metric at most
    ``max_bytes``), ``pareto`` (size and metric both)."""

    mode: Mode
    metric_direction: str = "max"
    max_bytes: int | None = None
    quick_samples: int | None = None
    early_stop: bool = True
    objective: str = "size"  # the unit of sizes in trial notes (latency: ns, shown in ms)

    @property
    def directions(self) -> list[Literal["minimize", "maximize"]]:
        metric: Literal["minimize", "maximize"] = "maximize" if self.metric_direction == "max" else "minimize"
        if self.mode == "gates":
            return ["minimize"]
        if self.mode == "target":
            return [metric]
        return ["minimize", metric]


@dataclass(frozen=True)
class TrialRecord:
    """One tried plan as stored in the study."""

    number: int
    stage: str
    state: str
    plan: Plan
    size: int | None
    metric: float | None
    passed: bool | None
    shortfall: float | None
    samples: int | None
    note: str
    seconds: float | None
    worker: int | None

    @property
    def evaluated(self) -> bool:
        return self.metric is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "stage": self.stage, "state": self.state, "size": self.size,
            "metric": self.metric, "passed": self.passed, "shortfall": self.shortfall, "samples": self.samples,
            "note": self.note, "seconds": self.seconds, "worker": self.worker, "plan": self.plan.describe(),
        }  # fmt: skip


def _constraint(trial: Any) -> Sequence[float]:
    return [float(trial.user_attrs.get("constraint", 1.0))]


def make_sampler(kind: str, seed: int | None, n_startup: int, constrained: bool) -> Any:
    import optuna

    cf = _constraint if constrained else None
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup, constraints_func=cf)
    if kind == "tpe":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate is flagged experimental
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, n_startup_trials=n_startup, constraints_func=cf
            )
    from onnxcompress.errors import ConfigError

    raise ConfigError(f"unknown sampler {kind!r}: use tpe, gp or random")


def best_passing_size(study: Any) -> int | None:
    from optuna.trial import TrialState

    sizes = [
        t.user_attrs["size"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("passed") and t.user_attrs.get("size") is not None
    ]
    return min(sizes) if sizes else None


class Objective:
    """The function every trial runs (in any worker process)."""

    def __init__(
        self, cands: Candidates, space: Space, goal: Goal, *, worker: int = 0,
        on_trial: Callable[[TrialRecord], None] | None = None,
    ) -> None:  # fmt: skip
        self.cands = cands
        self.space = space
        self.goal = goal
        self.worker = worker
        self.stage = "stage3"
        self.on_trial = on_trial
        self.last: TrialRecord | None = None  # the last trial this process ran

    def __call__(self, trial: Any) -> Any:
        import optuna

        t0 = time.perf_counter()
        plan = self.space.suggest(trial)
        stage = self.stage if trial.user_attrs.get("stage") is None else trial.user_attrs["stage"]
        trial.set_user_attr("stage", stage)
        trial.set_user_attr("plan", json.dumps(plan.to_dict(), sort_keys=True))
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("pid", os.getpid())
        built = self.cands.build(plan)
        size = built.size
        trial.set_user_attr("size", size)

        def stop(
            note: str, constraint: float, samples: int | None = None, metric: float | None = None
        ) -> None:
            trial.set_user_attr("note", note)
            trial.set_user_attr("constraint", constraint)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 4))
            if metric is not None:
                trial.set_user_attr("quick_metric", metric)
                trial.set_user_attr("shortfall", constraint if math.isfinite(constraint) else 1e9)
                trial.set_user_attr("samples", samples)
            self._report(trial, plan, "PRUNED")
            raise optuna.TrialPruned(note)

        g = self.goal

        def text(value: int) -> str:
            return cost_text(value, g.objective)

        if g.early_stop and g.mode == "gates":
            best = best_passing_size(trial.study)
            if best is not None and size >= best:
                stop(f"{text(size)} is not below the best passing {text(best)}", 1.0)
        if g.mode in ("target", "pareto") and g.max_bytes is not None and size > g.max_bytes:
            over = (size - g.max_bytes) / g.max_bytes * 100
            if g.early_stop or g.mode == "target":
                stop(f"{text(size)} is above the target {text(g.max_bytes)}", over)
        quick = g.quick_samples
        if g.early_stop and quick and quick < self.cands.samples:
            m = self.cands.measure(built, samples=quick)
            if m.evaluation.shortfall > HOPELESS_SHORTFALL:
                stop(f"hopeless on the first {quick} samples: {m.evaluation.describe()}",
                     m.evaluation.shortfall, quick, m.evaluation.metric)  # fmt: skip
        m = self.cands.measure(built)
        ev = m.evaluation
        trial.set_user_attr("metric", ev.metric)
        trial.set_user_attr("passed", ev.passed)
        trial.set_user_attr("shortfall", ev.shortfall if math.isfinite(ev.shortfall) else 1e9)
        trial.set_user_attr("samples", m.samples)
        trial.set_user_attr("note", ev.describe())
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 4))
        constraint = ev.shortfall if math.isfinite(ev.shortfall) else 1e9
        if g.mode == "pareto" and g.max_bytes is not None and size > g.max_bytes:
            constraint += (size - g.max_bytes) / g.max_bytes * 100
        trial.set_user_attr("constraint", constraint)
        metric = ev.metric if math.isfinite(ev.metric) else (-1e9 if g.metric_direction == "max" else 1e9)
        self._report(trial, plan, "COMPLETE")
        if g.mode == "gates":
            return float(size)
        if g.mode == "target":
            return float(metric)
        return float(size), float(metric)

    def _report(self, trial: Any, plan: Plan, state: str) -> None:
        self.last = record_of(trial, state, plan)
        if self.on_trial is not None:
            self.on_trial(self.last)


def record_of(trial: Any, state: str | None = None, plan: Plan | None = None) -> TrialRecord:
    ua = trial.user_attrs
    if plan is None:
        plan = Plan.from_dict(json.loads(ua["plan"])) if "plan" in ua else Plan()
    st = state or trial.state.name
    return TrialRecord(
        trial.number, ua.get("stage", "stage3"), st, plan, ua.get("size"),
        ua.get("metric") if st == "COMPLETE" else None, ua.get("passed") if st == "COMPLETE" else None,
        ua.get("shortfall"), ua.get("samples"), ua.get("note", ""), ua.get("seconds"), ua.get("worker"),
    )  # fmt: skip


def records(study: Any) -> list[TrialRecord]:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [record_of(t) for t in study.get_trials(deepcopy=False, states=done)]


def finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    )


@dataclass
class StudySpec:
    """Everything a worker process needs to join a study (picklable)."""

    storage: str | None
    study: str
    sampler: str
    seed: int | None
    trials: int
    timeout: float | None
    n_startup: int
    goal: Goal
    space: Space
    candidates: dict[str, Any] = field(default_factory=dict)  # Candidates(**candidates) in a worker


def open_study(spec: StudySpec, *, seed: int | None, storage_obj: Any = None) -> Any:
    import optuna

    from onnxcompress.search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = (
        storage_obj if storage_obj is not None else (open_storage(spec.storage) if spec.storage else None)
    )
    constrained = spec.goal.mode == "gates" or spec.goal.max_bytes is not None or True
    sampler = make_sampler(spec.sampler, seed, spec.n_startup, constrained)
    return optuna.create_study(
        storage=storage, study_name=spec.study, sampler=sampler, directions=spec.goal.directions,
        load_if_exists=True,
    )  # fmt: skip


def optimize(
    study: Any, objective: Objective, spec: StudySpec, *, max_evaluations: int | None = None
) -> None:
    """Run trials until the study holds ``spec.trials`` finished ones (all workers together), the
    timeout passes, or ``max_evaluations`` model runs were spent in this process."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    callbacks: list[Any] = [MaxTrialsCallback(spec.trials, states=states)]
    start_evals = objective.cands.evaluations
    if max_evaluations is not None:

        def budget(study: Any, trial: Any) -> None:
            if objective.cands.evaluations - start_evals >= max_evaluations:
                study.stop()

        callbacks.append(budget)
    remaining = spec.trials - finished(study)
    if remaining <= 0:
        return
    study.optimize(
        objective, n_trials=remaining, timeout=spec.timeout, callbacks=callbacks, gc_after_trial=False,
        catch=(),
    )  # fmt: skip


def worker_main(spec: StudySpec, index: int) -> int:
    """Entry point of a local worker process (``--workers N``): join the study, run trials."""
    import sys

    sys.stderr.write("")  # keep imports of this module light; the heavy work follows
    cands = Candidates(**spec.candidates)
    study = open_study(spec, seed=None if spec.seed is None else spec.seed + index)
    optimize(study, Objective(cands, spec.space, spec.goal, worker=index), spec)
    return 0
