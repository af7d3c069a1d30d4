"""Structured pruning end to end: analyze -> score -> choose -> slice -> refit -> report.

:func:`prune_model` takes a ModelProto and returns a new, smaller one (the input is not touched);
its output is an ordinary ONNX model that the codebook stage can then compress.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxcompress.calibration.capture import get_tensor
from onnxcompress.errors import DataError, InvalidModelError
from onnxcompress.structured.activations import batches_of, capture
from onnxcompress.structured.allocation import allocate
from onnxcompress.structured.config import StructuredConfig
from onnxcompress.structured.criteria import importance
from onnxcompress.structured.flops import count_flops, count_params
from onnxcompress.structured.graph import Analysis, Group, analyze
from onnxcompress.structured.latency import measure_change
from onnxcompress.structured.prune import Pruned, apply
from onnxcompress.structured.refit import refit
from onnxcompress.structured.report import GroupRow, StructuredReport


def group_ratio(group: Group, config: StructuredConfig, global_ratio: float | None = None) -> float:
    """The smallest ratio any source of the group asks for; attention-head groups follow
    ``config.heads`` unless a ``names`` entry matches one of their sources."""
    if group.kind == "heads":
        named = [config.resolve((s.name, s.weight), "", None) for s in group.sources
                 if any(config.overridden((n,), "") for n in (s.name, s.weight))]  # fmt: skip
        return min(named) if named else config.heads
    return min(config.resolve((s.name, s.weight), s.op_type, global_ratio) for s in group.sources)


def choose(
    analysis: Analysis,
    scores: Mapping[int, Mapping[int, float]],
    config: StructuredConfig,
    global_ratio: float | None = None,
    ratios: Mapping[int, float] | None = None,
) -> set[int]:
    """The channel classes to remove: the least important of each prunable group. ``ratios``
    (group index -> ratio, from :func:`group_ratios`) replaces the plan's ratio of the groups it
    names."""
    removed: set[int] = set()
    for g in analysis.groups:
        if not g.prunable:
            continue
        ratio = ratios[g.index] if ratios is not None and g.index in ratios else group_ratio(g, config, global_ratio)
        n = g.channels
        # a head class stands for ``unit`` channels: round the kept channels, not the kept heads
        step = config.round_to // math.gcd(config.round_to, g.unit)
        keep = max(-(-config.min_channels // g.unit), math.ceil((1.0 - ratio) * n - 1e-9))
        keep = min(n, -(-keep // step) * step)
        candidates = [c for c in g.classes if c not in g.fixed]
        count = min(n - keep, len(candidates))
        if count <= 0:
            continue
        sc = scores[g.index]
        removed.update(sorted(candidates, key=lambda c: (sc[c], c))[:count])
    _keep_one_everywhere(analysis, removed, scores)
    return removed


@dataclasses.dataclass(frozen=True)
class _Costs:
    """What the ``global`` allocation needs: normalised marginal costs and FLOPs per channel."""

    costs: Mapping[int, float]
    flops_per_channel: Mapping[int, float]


def group_ratios(
    analysis: Analysis,
    scores: Mapping[int, Mapping[int, float]],
    config: StructuredConfig,
    global_ratio: float,
    costs: _Costs | None,
) -> dict[int, float] | None:
    """Per-group ratios of the ``global`` allocation (None for ``uniform``): the groups that follow
    the global ratio share it (:func:`onnxcompress.structured.allocation.allocate`)."""
    if costs is None:
        return None
    out: dict[int, float] = {}
    if config.allocation == "global":
        pool = [
            g for g in analysis.groups
            if g.prunable and g.kind != "heads"
            and not any(config.overridden((s.name, s.weight), s.op_type) for s in g.sources)
        ]  # fmt: skip
        out.update(allocate(pool, scores, costs.costs, global_ratio, costs.flops_per_channel, config.min_channels))
    if config.heads_allocation == "global" and config.heads > 0:
        heads = [
            g for g in analysis.groups
            if g.prunable and g.kind == "heads"
            and not any(config.overridden((s.name, s.weight), "") for s in g.sources)
        ]  # fmt: skip
        out.update(allocate(heads, scores, costs.costs, config.heads, costs.flops_per_channel, 1))
    return out if config.allocation == "global" or out else None


def _keep_one_everywhere(
    analysis: Analysis, removed: set[int], scores: Mapping[int, Mapping[int, float]]
) -> None:
    """No consumer input, Split piece or Slice may lose every channel (a zero-width tensor): give
    back the best removed class of any that would."""
    score = {c: s for per in scores.values() for c, s in per.items()}
    spans = [c.ids for c in analysis.consumers]
    for e in analysis.edits:
        if e.kind == "split":
            spans.extend(e.pieces)
        elif e.kind == "slice":
            spans.append(e.ids[e.bounds[0] : e.bounds[1]])
    for ids in spans:
        classes = set(analysis.classes_of(ids).tolist())
        if classes and classes <= removed:
            removed.discard(max(classes, key=lambda c: (score.get(c, 0.0), -c)))


def _channel_energy(
    model: onnx.ModelProto,
    analysis: Analysis,
    batches: list[dict[str, np.ndarray]],
    hessians: dict[int, np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """``E[x^2]`` of each position of every consumer's weight input axis; with ``hessians`` (a
    dict to fill) also ``E[[x, 1][x, 1]^T]`` of every MatMul / Gemm consumer (the ``obs``
    criterion)."""
    consumers = [
        c for c in analysis.consumers if any(c in g.consumers for g in analysis.groups if g.prunable)
    ]
    acts = capture(model, [model.graph.node[c.node].input[0] for c in consumers], batches)
    out: dict[int, np.ndarray] = {}
    for c in consumers:
        x = acts[model.graph.node[c.node].input[0]].astype(np.float64)
        if c.op_type in ("Conv", "ConvTranspose"):
            if x.ndim < 3:
                raise DataError(f"{c.name}: a convolution needs calibration batches of one image size")
            e = np.mean(x**2, axis=tuple(k for k in range(x.ndim) if k != 1))
            out[c.node] = e.reshape(-1, len(c.ids)).sum(axis=0)  # grouped: lanes add up
        else:
            rows = x.reshape(-1, x.shape[-1])
            out[c.node] = np.mean(rows**2, axis=0)
            if hessians is not None and c.node not in hessians:
                aug = np.hstack([rows, np.ones((len(rows), 1))])
                hessians[c.node] = aug.T @ aug / len(rows)
    return out


def calibration_batches(
    calibration: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], max_samples: int
) -> list[dict[str, np.ndarray]]:
    """Batches from a mapping of equally long input arrays, or batches given as they are (up to
    ``max_samples`` samples): the way to calibrate a transformer on unpadded sentences, whose
    padding rows would otherwise dominate the criterion and the least-squares refit."""
    if isinstance(calibration, Mapping):
        return batches_of(calibration, max_samples=max_samples)
    out: list[dict[str, np.ndarray]] = []
    n = 0
    for batch in calibration:
        if n >= max_samples:
            break
        rows = min(len(v) for v in batch.values())
        take = min(rows, max_samples - n)
        out.append({k: np.asarray(v)[:take] for k, v in batch.items()})
        n += take
    if not out:
        raise DataError("calibration data has no samples")
    return out


def pruning_inputs(
    model: onnx.ModelProto, data: str | os.PathLike[str] | Mapping[str, np.ndarray] | None, samples: int
) -> dict[str, np.ndarray] | None:
    """The calibration samples structured pruning sees: the same ones ``compress --structured
    --calibration-data`` takes (None without data: the ``l1`` criterion, no refit)."""
    if data is None:
        return None
    from onnxcompress.calibration.pipeline import open_calibration_data

    batches, _ = open_calibration_data(model, data, samples=samples, batch_size=64)
    parts = list(batches())
    return {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}


def prune_model(
    model: onnx.ModelProto,
    config: StructuredConfig,
    calibration: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
) -> tuple[onnx.ModelProto, StructuredReport]:
    """A smaller copy of ``model`` and the report. ``calibration``: model inputs (a few hundred
    samples of training or validation data, never test data) for the ``activation`` criterion
    and the refit: one mapping of input arrays, or a sequence of batches whose shapes may differ
    (e.g. token sequences of their own lengths, see :func:`calibration_batches`)."""
    t0 = time.perf_counter()
    analysis = analyze(model)
    batches = calibration_batches(calibration, config.samples) if calibration else None
    criterion = config.criterion
    if criterion == "auto":
        criterion = "activation" if batches else "l1"
    hessians: dict[int, np.ndarray] | None = {} if criterion == "obs" else None
    energy = (
        _channel_energy(model, analysis, batches, hessians)
        if criterion in ("activation", "obs") and batches
        else None
    )
    marginal: dict[int, float] | None = (
        {} if config.allocation == "global" or config.heads_allocation == "global" else None
    )
    scores = {
        g.index: importance(model, analysis, g, criterion, energy, hessians, marginal)
        for g in analysis.groups
        if g.prunable
    }
    before = count_flops(model)
    costs = None
    if marginal is not None:
        per_channel = {
            g.index: sum(before.by_node.get(n, 0) for n in {s.name for s in g.sources} | {c.name for c in g.consumers})
            / max(g.channels, 1)
            for g in analysis.groups
        }  # fmt: skip
        costs = _Costs(marginal, per_channel)
    global_ratio = config.ratio
    if config.target_flops is not None:
        global_ratio = _search_ratio(model, analysis, scores, config, before.total * config.target_flops, costs)
    ratios = group_ratios(analysis, scores, config, global_ratio, costs)
    removed = choose(analysis, scores, config, global_ratio, ratios)
    pruned = apply(model, analysis, removed)
    refit_rows = []
    if batches and config.refit != "none" and removed:
        refit_rows = refit(model, pruned, analysis, batches, mode=config.refit, ridge=config.ridge,
                           prior=config.refit_prior, residual=config.refit_residual)  # fmt: skip
    try:
        onnx.checker.check_model(pruned.model)
        onnx.shape_inference.infer_shapes(pruned.model, strict_mode=True)
    except Exception as exc:  # a bug here must not produce a broken file
        raise InvalidModelError(f"structured pruning produced an invalid model ({str(exc).splitlines()[0][:200]}); "
                                "exclude the group with structured: names: {NAME: 0} and report the model") from None  # fmt: skip
    after = count_flops(pruned.model)
    rows = _rows(model, pruned, analysis, config, global_ratio, before.by_node, after.by_node, ratios)
    lat = None
    if config.latency != "none":
        first = batches[0] if batches else None
        lat = measure_change(model, pruned.model, first)
        if config.latency == "groups":
            rows = [_group_latency(model, analysis, removed, g, row, first) for g, row in zip(analysis.groups, rows, strict=True)]  # fmt: skip
    report = StructuredReport(
        groups=rows,
        flops_before=before.total, flops_after=after.total, params_before=count_params(model),
        params_after=count_params(pruned.model), criterion=criterion, refit=refit_rows,
        global_ratio=global_ratio, seconds=time.perf_counter() - t0,
        latency_before_ms=lat.before_ms if lat else None, latency_after_ms=lat.after_ms if lat else None,
    )  # fmt: skip
    return pruned.model, report


def _group_latency(model, analysis: Analysis, removed: set[int], g: Group, row: GroupRow, batch) -> GroupRow:
    """``row`` with the latency of the model in which only group ``g`` lost its channels."""
    mine = removed & set(g.classes)
    if not mine:
        return row
    lat = measure_change(model, apply(model, analysis, mine).model, batch)
    return dataclasses.replace(row, latency_before_ms=lat.before_ms, latency_after_ms=lat.after_ms)


def _search_ratio(model, analysis, scores, config, target: float, costs: _Costs | None = None) -> float:
    """Bisect the global ratio whose pruned model has at most ``target`` FLOPs."""

    def flops(ratio: float) -> int:
        ratios = group_ratios(analysis, scores, config, ratio, costs)
        return count_flops(apply(model, analysis, choose(analysis, scores, config, ratio, ratios)).model).total

    lo, hi = 0.0, 0.95
    if flops(hi) > target:
        return hi
    for _ in range(12):
        mid = (lo + hi) / 2
        if flops(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def _rows(model, pruned: Pruned, analysis, config, global_ratio, f0, f1, ratios=None) -> list[GroupRow]:
    rows = []
    for g in analysis.groups:
        kept = sum(1 for c in g.classes if c not in _removed_classes(pruned, analysis, g))
        weights = {s.weight for s in g.sources}
        p0 = sum(int(get_tensor(model, w).size) for w in weights)
        p1 = sum(int(get_tensor(pruned.model, w).size) for w in weights)
        nodes = {s.name for s in g.sources} | {c.name for c in g.consumers}
        rows.append(GroupRow(
            group=g.index, name=g.name, sources=tuple(s.name for s in g.sources),
            consumers=tuple(c.name for c in g.consumers),
            ratio=(ratios[g.index] if ratios and g.index in ratios else group_ratio(g, config, global_ratio))
            if g.prunable else 0.0,
            channels_before=g.channels, channels_after=kept, params_before=p0, params_after=p1,
            flops_before=sum(f0.get(n, 0) for n in nodes), flops_after=sum(f1.get(n, 0) for n in nodes),
            refused=g.refused, kind=g.kind,
        ))  # fmt: skip
    return rows


def _removed_classes(pruned: Pruned, analysis: Analysis, g: Group) -> set[int]:
    s = g.sources[0]
    kept = pruned.kept_outputs.get(s.node)
    if kept is None:
        return set()
    classes = analysis.classes_of(s.ids)
    return set(classes.tolist()) - set(classes[kept].tolist())
