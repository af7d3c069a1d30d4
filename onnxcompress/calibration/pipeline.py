"""Calibration-aware post-training compression: statistics -> per-weight calibrated encodings.

:func:`calibrate` runs the model on calibration data, gathers each compressible weight's input
statistics (:mod:`.capture`), and compresses every weight it can with the calibrated methods
(:mod:`onnxcompress.algorithms.calibrated`), under the *same* per-weight settings
(bits, sparsity, granularity) the plan gives the plain path. The result plugs into
:func:`~onnxcompress.compressor.compress_model` as its ``weight_hook``::

    result = calibrate(model, "calib.npz", config)
    out = compress_model(model, config, weight_hook=result.hook)
    out.report.extra["calibration"] = result.to_dict()

Weights it cannot handle (shared weights, Loop/Scan bodies, unsupported consumers, CLIP-Q, If
branches no calibration batch took) fall back to the plain algorithms (the hook returns None). Bias correction edits bias initializers of ``model`` in
place (biases are never compressed), so compress the same ModelProto afterwards.

Per weight the report gives the relative output error ``sqrt(tr(dW H dW^T) / tr(W H W^T))`` of the
plain algorithm and of the calibrated one, both on the same ``H`` (in sequential mode, the ``H`` of
inputs produced by the already-compressed earlier layers).

Memory. Besides ``model`` itself, a run holds one weight's working arrays at a time (its ``H`` and
float64 views), the frontier cache, the compressed values of the last few stages (which later
stages must see; the frontier capture releases them when no later run reads them), and per
calibrated weight a :class:`CalibratedEncoding`: uint8 codes, about one byte per weight. The
encoding and the decoded array are rebuilt from it when ``compress_model`` asks for them. No copy
of the model is made unless the capture falls back to rerunning the graph prefix.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxcompress import methods
from onnxcompress.algorithms import pruning
from onnxcompress.algorithms.calibrated.bias_correction import bias_shift
from onnxcompress.algorithms.calibrated.gptq_codebook import (
    decode_codes,
    gptq_codebook_blocks,
    kmeans_codebook,
    nearest_codes,
    row_segments,
    to_codebook_tensor,
)
from onnxcompress.algorithms.calibrated.hessian import relative_output_error, row_weighted_error
from onnxcompress.algorithms.calibrated.ls_refit import ls_refit
from onnxcompress.algorithms.calibrated.obs_prune import obs_prune_blocks
from onnxcompress.algorithms.calibrated.weighted_kmeans import hessian_sensitivity, row_sensitivity
from onnxcompress.calibration.capture import (
    LayerStats,
    capture,
    find_targets,
    get_tensor,
    prepare,
    set_tensor,
    stages,
)
from onnxcompress.calibration.config import CalibrationConfig
from onnxcompress.calibration.frontier import FrontierCapture, FrontierUnsupported
from onnxcompress.calibration.smooth import SmoothedInput, smooth_model
from onnxcompress.config import CompressionConfig, WeightConfig, plan, preset
from onnxcompress.encoding import EncodedWeight
from onnxcompress.errors import DataError
from onnxcompress.inventory import WeightInfo, build_inventory, tensor_array
from onnxcompress.methods.masks import global_threshold, keep_mask
from onnxcompress.progress import ProgressCallback, track


@dataclass(frozen=True, eq=False)
class CalibratedEncoding:
    """What calibration keeps of one calibrated weight: enough to rebuild its encoding and decoded
    array bit for bit, in about a byte per weight.

    Keeping the :class:`EncodedWeight` and the decoded array instead costs 4 bytes per weight for the
    decoded float32 array plus 8 per *kept* weight for the int64 positions of a pruned encoding:
    over twice the model's own size for the whole run. A codebook weight keeps its
    :class:`~onnxcompress.algorithms.codebook.CodebookTensor` (uint8 codes); a pruned-only weight keeps
    its decoded array and its mask as bits.
    """

    name: str
    axis: int
    encoding: str
    gap_bits: int | None
    table: Any = None  # CodebookTensor (codebook methods)
    dense: np.ndarray | None = None  # pruned-only: the decoded weight, in its own dtype
    keep_bits: np.ndarray | None = None  # pruned-only: np.packbits of the channel-major keep mask

    def decoded(self) -> np.ndarray:
        """The decoded weight (original layout and dtype)."""
        if self.table is not None:
            from onnxcompress.algorithms.codebook import decompress

            return decompress(self.table)
        assert self.dense is not None
        return self.dense

    def build(self) -> tuple[EncodedWeight, np.ndarray]:
        """``(encoding, decoded array)``, as ``compress_model``'s weight hook returns them."""
        if self.table is not None:
            enc = methods.encode(self.name, self.table, encoding=self.encoding, gap_bits=self.gap_bits)
            return enc, self.decoded()
        assert self.dense is not None and self.keep_bits is not None
        moved = np.ascontiguousarray(np.moveaxis(self.dense, self.axis, 0))
        keep = np.unpackbits(self.keep_bits, count=moved.size).view(bool).reshape(moved.shape)
        pruned = methods.Pruned(pruning.compress(moved, keep), self.axis, tuple(self.dense.shape))
        enc = methods.encode(self.name, pruned, encoding=self.encoding, gap_bits=self.gap_bits)
        return enc, self.dense


class CalibratedEncodings(Mapping[str, tuple[EncodedWeight, np.ndarray]]):
    """``name -> (EncodedWeight, decoded array)`` of the calibrated weights, rebuilt on every access
    from the compact :class:`CalibratedEncoding` records (see :meth:`record`)."""

    def __init__(self) -> None:
        self._records: dict[str, CalibratedEncoding] = {}

    def __getitem__(self, name: str) -> tuple[EncodedWeight, np.ndarray]:
        return self._records[name].build()

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def record(self, name: str) -> CalibratedEncoding:
        return self._records[name]

    def add(self, rec: CalibratedEncoding) -> None:
        self._records[rec.name] = rec


@dataclass
class WeightCalibration:
    """One calibrated weight: what was done and the output error it gave."""

    name: str
    kind: str  # linear / conv / embedding
    method: str  # e.g. "obs + gptq + refit"
    setting: str  # the WeightConfig it honours
    stage: int
    rows_seen: int  # rows of X (or lookups) behind its statistics
    error_plain: float | None  # relative output error of the plain algorithm
    error_calibrated: float  # relative output error after calibration
    bias_corrected: bool
    seconds: float


@dataclass
class CalibrationResult:
    """Per-weight calibrated encodings and what calibration measured; ``hook`` feeds compress."""

    config: CalibrationConfig
    # (encoding, decoded array) per calibrated weight, rebuilt on access from compact records
    encoded: CalibratedEncodings = field(default_factory=CalibratedEncodings)
    settings: dict[str, WeightConfig] = field(default_factory=dict)
    weights: list[WeightCalibration] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bias_updates: dict[str, np.ndarray] = field(default_factory=dict)  # new bias values by name
    # format: runtime weights: name -> passes.runtime_native.RuntimeWeight (codes, a byte per weight)
    runtime: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    stages: int = 0
    seconds: float = 0.0
    capture_seconds: float = 0.0
    # how sequential stages were captured: "prefix" (the graph prefix from the model inputs, per
    # stage), "frontier" (from the activations cached at the previous cut, see .frontier), or
    # "frontier, prefix from stage N (why)" when the frontier capture had to give up
    capture_mode: str = ""
    # calibration.smooth: the activations routed through a per-channel Mul (SmoothQuant), in the model
    smoothed: list[SmoothedInput] = field(default_factory=list)

    def hook(
        self, w: np.ndarray, info: WeightInfo, cfg: WeightConfig
    ) -> tuple[EncodedWeight, np.ndarray] | None:
        """``compress_model``'s weight hook: the calibrated encoding, or None (plain algorithm) when
        this weight was not calibrated or is asked for with different settings."""
        if self.settings.get(info.name) != cfg:
            return None
        if info.name in self.runtime:
            from onnxcompress.passes import runtime_native as rn

            rw = self.runtime[info.name]
            return rw, rn.decoded(rw)
        if info.name not in self.encoded:
            return None
        return self.encoded[info.name]

    def apply_bias_updates(self, model: onnx.ModelProto) -> int:
        """Write the corrected biases into another copy of the model; returns how many were set."""
        for name, value in self.bias_updates.items():
            set_tensor(model, name, value)
        return len(self.bias_updates)

    def to_dict(self) -> dict[str, Any]:
        errs = [(w.error_plain, w.error_calibrated) for w in self.weights if w.error_plain is not None]
        return {
            "config": self.config.to_dict(),
            "samples": self.samples,
            "stages": self.stages,
            "seconds": self.seconds,
            "capture_seconds": self.capture_seconds,
            "capture_mode": self.capture_mode,
            "mean_error_plain": float(np.mean([e[0] for e in errs])) if errs else None,
            "mean_error_calibrated": float(np.mean([e[1] for e in errs])) if errs else None,
            "weights": [dataclasses.asdict(w) for w in self.weights],
            "skipped": dict(self.skipped),
            "bias_corrected": sorted(self.bias_updates),
            "smoothed": [x.to_dict() for x in self.smoothed],
        }


# ------------------------------------------------------------------------------------------ per weight


def weight_rows(w: np.ndarray, axis: int) -> np.ndarray:
    """``w`` as float64 rows, one per slice of the output ``axis`` (the layout calibration works in)."""
    moved = np.moveaxis(w, axis, 0)
    return moved.reshape(moved.shape[0], -1).astype(np.float64)


def _from_w2(w2: np.ndarray, shape: tuple[int, ...], axis: int, dtype: np.dtype) -> np.ndarray:
    moved_shape = (shape[axis], *[s for i, s in enumerate(shape) if i != axis])
    return np.moveaxis(w2.reshape(moved_shape), 0, axis).astype(dtype)


def _sparsity_for(w: np.ndarray, info: WeightInfo, cfg: WeightConfig, global_t: float | None) -> float:
    """The per-layer pruning fraction the plain rule would give (for rules that are not a fraction)."""
    if cfg.pruning == "magnitude":
        return float(cfg.sparsity)
    mask = keep_mask(w, info, cfg, global_t)
    return float(1.0 - mask.mean()) if mask is not None else 0.0


def calibrate_weight(
    w: np.ndarray,
    info: WeightInfo,
    cfg: WeightConfig,
    stats: LayerStats,
    ccfg: CalibrationConfig,
    *,
    global_t: float | None = None,
    seed: int = 0,
) -> tuple[CalibratedEncoding, np.ndarray, np.ndarray, str]:
    """Calibrated compression of one weight: ``(record, decoded array, decoded W2 view, method)``;
    ``record.build()`` gives the encoding."""
    from onnxcompress.algorithms.codebook import store_dtype

    w2 = weight_rows(w, info.axis)
    rows, cols = w2.shape
    steps: list[str] = []
    keep: np.ndarray | None = None
    work = w2
    embedding = stats.kind == "embedding"
    if cfg.prunes:
        if ccfg.prune_method == "obs" and not embedding:
            nm = cfg.pruning == "nm"
            sp = None if nm else _sparsity_for(w, info, cfg, global_t)
            kw = {"n": cfg.n, "m": cfg.m} if nm else {"sparsity": sp}
            # one H, or one per row block (groups of a convolution, batched when equal; gates of a GRU)
            work, keep = obs_prune_blocks(w2, stats.blocks, damp=ccfg.damp, block_size=ccfg.block_size, **kw)
            steps.append("obs")
        elif ccfg.prune_method == "obs" and embedding and cfg.pruning in ("magnitude", "global", "std"):
            # diagonal H: the OBS saliency is lookups x w^2
            sp = _sparsity_for(w, info, cfg, global_t)
            assert stats.counts is not None  # an embedding's statistics are its lookup counts
            sal = (w2**2) * (stats.counts[:, None] + 1e-3 * max(float(stats.counts.mean()), 1e-12))
            keep = pruning.magnitude_mask(np.sqrt(sal), sp)
            work = np.where(keep, w2, 0.0)
            steps.append("obs")
        else:
            mask = keep_mask(w, info, cfg, global_t)
            assert mask is not None
            keep = weight_rows(mask.astype(np.float64), info.axis) > 0
            work = np.where(keep, w2, 0.0)
            steps.append("magnitude")
    unpruned = work is w2
    if not unpruned:  # the refit recomputes it: two float64 copies of the weight at a time, not three
        del w2
    if not cfg.quantizes:
        assert keep is not None
        dec2 = np.where(keep, work, 0.0)
        dec = _from_w2(dec2, info.shape, info.axis, w.dtype)
        rec = CalibratedEncoding(
            info.name, info.axis, cfg.encoding, cfg.gap_bits, dense=dec,
            keep_bits=np.packbits(keep.reshape(-1)),  # keep is [rows, cols]: the channel-major order
        )  # fmt: skip
        return rec, dec, dec2.astype(np.float64), " + ".join(steps)

    sdt = store_dtype(w.dtype, cfg.codebook_dtype)
    # a shared scaled codebook is the plain path's; calibrated, such a weight gets its own table
    seg = row_segments(rows, "tensor" if cfg.granularity == "shared" else cfg.granularity, cfg.group_size)
    pruned = keep is not None and not keep.all()
    kp = keep if pruned else None
    if ccfg.quant_method == "weighted-kmeans" or (embedding and ccfg.quant_method == "gptq"):
        sens = (
            row_sensitivity(_counts(stats), cols)
            if embedding
            else hessian_sensitivity(rows, [(sl, np.diag(h)) for sl, h in stats.blocks])
        )
        book = kmeans_codebook(work, seg, cfg.bits, keep=kp, sample_weight=sens, init=cfg.init, seed=seed)
        steps.append("weighted-kmeans")
    else:
        book = kmeans_codebook(work, seg, cfg.bits, keep=kp, init=cfg.init, seed=seed)
        steps.append("kmeans")
    book = book.astype(sdt).astype(np.float64)
    if ccfg.quant_method == "gptq" and not embedding:
        # one H, or one per row block (groups of a convolution, batched when equal; gates of a GRU)
        codes = gptq_codebook_blocks(
            work, stats.blocks, book, seg, keep=kp, damp=ccfg.damp, block_size=ccfg.block_size
        )
        steps[-1] = "gptq"
    else:
        codes = nearest_codes(work, book, seg, kp)
    del work
    if ccfg.refit and not embedding:
        target = w2 if unpruned else weight_rows(w, info.axis)
        book = ls_refit(target, stats.blocks, codes, book, seg, pruned=pruned, codebook_dtype=str(sdt))
        book = book.astype(np.float64)
        del target
        steps.append("refit")
    ct = to_codebook_tensor(
        codes, book, seg, shape=tuple(w.shape), dtype=w.dtype, axis=info.axis, bits=cfg.bits, pruned=pruned,
        codebook_dtype=str(sdt),
    )  # fmt: skip
    rec = CalibratedEncoding(info.name, info.axis, cfg.encoding, cfg.gap_bits, table=ct)
    dec2 = decode_codes(codes, book, seg)
    if pruned:
        dec2 = np.where(codes == 0, 0.0, dec2)
    return rec, _from_w2(dec2, info.shape, info.axis, w.dtype), dec2, " + ".join(steps)


def calibrate_runtime(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, stats: LayerStats, ccfg: CalibrationConfig,
    users: Mapping[str, list[onnx.NodeProto]], opset: int, global_t: float | None, baseline: bool,
) -> tuple[Any, Any, np.ndarray, str]:  # fmt: skip
    """A ``format: runtime`` weight with calibration: GPTQ error feedback on its affine codes
    (``affine.gptq``: scales fixed per block, codes rounded column by column against the layer's
    input Hessian) where the rewrite is a MatMul or Gemm and one Hessian covers every row; pruned
    weights (the plan's magnitude mask) stay exactly zero. Returns ``(RuntimeWeight, the plain
    RuntimeWeight for the report or None, decoded array, method)``."""
    from onnxcompress.passes import runtime_native as rn

    mask = keep_mask(w, info, cfg, global_t)
    hessian = None
    rows = info.shape[info.axis]
    if ccfg.quant_method == "gptq" and len(stats.blocks) == 1 and stats.kind != "embedding":
        sl, h = stats.blocks[0]
        if range(rows)[sl] == range(rows):
            hessian = h

    def run(h: np.ndarray | None) -> Any:
        return rn.quantize_planned(
            dict(users), w, info, cfg.bits, cfg.block_size, mask, hessian=h, activations=cfg.activations,
            opset=opset, per_channel=cfg.granularity != "tensor", accuracy_level=cfg.accuracy_level,
        )  # fmt: skip

    rw, dec = run(hessian)
    if rw.axis != info.axis:  # the Hessian's rows are the inventory's output channels: layouts differ
        rw, dec = run(None)
        hessian = None
    gptq = hessian is not None and rw.kind in ("matmul", "gemm", "matmul_int8", "gemm_int8")
    plain = (run(None)[0] if gptq else rw) if baseline else None
    return rw, plain, dec, "gptq (affine)" if gptq else "affine"


def _counts(stats: LayerStats) -> np.ndarray:
    assert stats.counts is not None  # an embedding's statistics are its lookup counts
    return stats.counts


def stats_error(w2: np.ndarray, dec2: np.ndarray, stats: LayerStats) -> float:
    """Relative output error of ``dec2`` against ``w2`` on the captured statistics (row-weighted
    for embeddings)."""
    if stats.kind == "embedding":
        return row_weighted_error(w2, dec2, _counts(stats))
    return relative_output_error(w2, dec2, stats.blocks)


# ------------------------------------------------------------------------------------------ data


def _spread(data: Any, samples: int, specs: Any = ()) -> Any:
    """Evenly spaced samples (on each input's batch axis) of an .npz path or array mapping; anything
    else unchanged."""
    if isinstance(data, (str, os.PathLike)) and str(data).lower().endswith(".npz"):
        try:
            with np.load(data, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception:  # open_data reports unreadable files with a proper message
            return data
    elif isinstance(data, Mapping):
        arrays = dict(data)
    else:
        return data
    from onnxcompress.evaluation.data import spread_samples

    spread = spread_samples(arrays, specs, samples)
    return data if all(spread[k] is arrays[k] for k in arrays) else spread


def open_calibration_data(
    model: onnx.ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray] | Any,
    *,
    samples: int,
    batch_size: int,
    labels_key: str | None = None,
) -> tuple[Callable[[], Iterable[dict[str, np.ndarray]]], int]:
    """A re-iterable batch stream of ``samples`` samples, and how many there are.

    From an .npz (or arrays) holding more than ``samples``, the samples are spread evenly over the
    file: data sets are often ordered (by class, or variants of one image side by side), and the
    first N would calibrate on a sliver of the distribution. Folders stream their first N.
    """
    from onnxcompress.evaluation.data import model_input_specs, open_data

    specs = model_input_specs(model)  # read from the graph: a session here would load every weight
    source = open_data(_spread(data, samples, specs), specs, labels_key=labels_key, samples=samples)
    size = source.batch_size_for(None, batch_size)
    n = min(len(source), samples)
    if n <= 0:
        raise DataError("the calibration data holds no samples; pass an .npz keyed by input name")

    def batches() -> Iterable[dict[str, np.ndarray]]:
        for b in source.batches(size, limit=samples):
            yield source.unpadded(b)

    return batches, n


# ------------------------------------------------------------------------------------------ driver


def _compressed_copy(model: onnx.ModelProto, encoded: CalibratedEncodings) -> onnx.ModelProto:
    """A copy of ``model`` with the weights calibrated so far replaced by their decoded values."""
    work = onnx.ModelProto()
    work.CopyFrom(model)
    for name in encoded:
        set_tensor(work, name, encoded.record(name).decoded())
    return work


#: Sequential mode captures each stage from the activations cached at the previous cut (linear in
#: depth, see :mod:`.frontier`); False reruns the graph prefix from the model inputs for every stage
#: (the reference the tests compare against).
_FRONTIER_CAPTURE = True


def calibrate(
    model: onnx.ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray] | Any,
    config: CompressionConfig | None = None,
    *,
    calibration: CalibrationConfig | None = None,
    samples: int | None = None,
    sequential: bool | None = None,
    progress: ProgressCallback | None = None,
    labels_key: str | None = None,
    threads: int | None = None,
    baseline: bool = True,
) -> CalibrationResult:
    """Calibrate every compressible weight of ``model`` for the plan ``config``.

    ``data``: an .npz / .npy / folder path, a mapping of arrays keyed by input name, or an
    ``onnxcompress.evaluation.data.DataSource``. ``samples`` and ``sequential`` default to the
    calibration config's (256, True). ``baseline`` also computes the plain algorithm's output error
    for the report (one plain compression per weight). Bias corrections are written into ``model``.
    """
    t0 = time.perf_counter()
    config = config or preset("safe")
    ccfg = calibration or CalibrationConfig()
    if samples is not None:
        ccfg = dataclasses.replace(ccfg, samples=int(samples))
    if sequential is not None:
        ccfg = dataclasses.replace(ccfg, sequential=bool(sequential))
    inventory = build_inventory(model, min_elements=config.min_elements, code_vectors=config.code_vectors)
    planned, _ = plan(inventory, config)
    result = CalibrationResult(config=ccfg)
    by_cfg: dict[str, WeightConfig] = {}
    infos = []
    for info, cfg in planned:
        plain = methods.get(cfg.method)
        if info.role == "vector":  # code_vectors: a bias or scale, not a layer's weight
            result.skipped[info.name] = "1-D tensor on the shared codebook (plain algorithm used)"
            continue
        if not plain.calibrated:
            result.skipped[info.name] = f"{plain.label} has no calibrated variant (plain algorithm used)"
            continue
        by_cfg[info.name] = cfg
        infos.append(info)
    batches, result.samples = open_calibration_data(
        model, data, samples=ccfg.samples, batch_size=ccfg.batch_size, labels_key=labels_key
    )
    if ccfg.smooth > 0:  # first: the weights and Hessians below are those of the smoothed model
        int8 = [n for n, c in by_cfg.items() if c.format == "runtime" and c.activations == "int8"]
        result.smoothed = smooth_model(model, int8, batches, ccfg.smooth, threads=threads)
    targets, why = find_targets(model, infos)
    result.skipped.update(why)
    if not targets:
        result.seconds = time.perf_counter() - t0
        return result
    # the model runs are made on: ``model`` itself, or a copy exposing activations inside If branches
    cmodel, targets = prepare(model, targets)
    global_t = global_threshold(planned, lambda name: tensor_array(model, name))
    from onnxcompress.passes.runtime_native import consumers
    from onnxcompress.passes.versions import default_opset

    users, opset = consumers(model), default_opset(model)  # for format: runtime weights
    groups = stages(cmodel, targets) if ccfg.sequential else [list(targets)]
    result.stages = len(groups)
    sequential = ccfg.sequential and len(groups) > 1
    # Later stages must see the compressed weights of the earlier ones. The frontier capture gets
    # them through update() and drops them once no later run reads them; ``model`` keeps its
    # weights (only corrected biases are written into it). The prefix capture reruns a copy of the
    # model with the compressed weights written in, made only when that capture is used.
    work: onnx.ModelProto | None = None if sequential else cmodel
    frontier: FrontierCapture | None = None
    result.capture_mode = "prefix"
    if _FRONTIER_CAPTURE and sequential:
        try:
            frontier = FrontierCapture(cmodel, groups, batches, threads=threads)
            result.capture_mode = "frontier"
        except FrontierUnsupported as exc:
            result.capture_mode = f"prefix (frontier capture unsupported: {exc})"
    blas = limit_blas_threads()  # restored in the finally below
    try:
        for si, stage in enumerate(track(groups, "calibrating", progress)):
            tc = time.perf_counter()
            stats = None
            if frontier is not None:
                try:
                    stats = frontier.capture(si)
                except FrontierUnsupported as exc:  # the rest of the run reruns the prefix per stage
                    frontier.close()
                    frontier = None
                    result.capture_mode = f"frontier, prefix from stage {si} ({exc})"
            if stats is None:
                if work is None:
                    work = _compressed_copy(cmodel, result.encoded)
                stats = capture(work, stage, batches, threads=threads)
            result.capture_seconds += time.perf_counter() - tc
            for t in stage:
                tw = time.perf_counter()
                name = t.info.name
                cfg = by_cfg[name]
                lc = ccfg.resolve(name)
                w = get_tensor(model, name)  # model keeps the original weights: one array at a time
                st = stats.pop(name)  # its H goes with this weight, not with the stage
                if st.samples == 0:  # e.g. an If branch no calibration batch took
                    result.skipped[name] = "no calibration data reached it (plain algorithm used)"
                    continue
                rt = None
                if cfg.format == "runtime":
                    rt, plain_rt, dec, method = calibrate_runtime(
                        w, t.info, cfg, st, lc, users, opset, global_t, baseline
                    )
                    dec2 = weight_rows(dec, t.info.axis)
                else:
                    rec, dec, dec2, method = calibrate_weight(
                        w, t.info, cfg, st, lc, global_t=global_t, seed=config.seed
                    )
                w2 = weight_rows(w, t.info.axis)
                err_cal = stats_error(w2, dec2, st)
                err_plain = None
                if rt is not None:
                    if plain_rt is not None:
                        from onnxcompress.passes import runtime_native as rn

                        err_plain = stats_error(w2, weight_rows(rn.decoded(plain_rt), t.info.axis), st)
                elif baseline:
                    ctx = methods.Context(seed=config.seed, global_threshold=global_t)
                    plain_dec = methods.decompress(methods.compress(w, t.info, cfg, ctx))
                    err_plain = stats_error(w2, weight_rows(plain_dec, t.info.axis), st)
                    del plain_dec
                corrected = False
                if lc.bias_correction and t.bias is not None and st.kind != "embedding":
                    b = get_tensor(model, t.bias)
                    shift = bias_shift(w2, dec2, st.means)
                    nb = (b.astype(np.float64).reshape(-1) + shift).astype(b.dtype).reshape(b.shape)
                    set_tensor(model, t.bias, nb)
                    if cmodel is not model:
                        set_tensor(cmodel, t.bias, nb)
                    if work is not None and work is not model and work is not cmodel:
                        set_tensor(work, t.bias, nb)
                    result.bias_updates[t.bias] = nb
                    corrected = True
                if sequential:
                    if frontier is not None:
                        frontier.update(name, dec)
                    if work is not None and work is not model and work is not cmodel:
                        set_tensor(work, name, dec)
                if rt is not None:
                    result.runtime[name] = rt
                else:
                    result.encoded.add(rec)
                result.settings[name] = cfg
                result.weights.append(
                    WeightCalibration(
                        name=name, kind=st.kind, method=method, setting=cfg.describe(), stage=si, rows_seen=st.samples,
                        error_plain=err_plain, error_calibrated=err_cal, bias_corrected=corrected,
                        seconds=time.perf_counter() - tw,
                    )
                )  # fmt: skip
                # of this weight only its record outlives the loop (and dec, while the frontier needs it)
                del w, w2, dec, dec2, st
            del stats
    finally:
        if frontier is not None:
            frontier.close()
        if blas is not None:
            blas.restore_original_limits()
    result.seconds = time.perf_counter() - t0
    return result


#: BLAS threads for the per-layer numerics on machines with at most this many cores (see below).
BLAS_THREADS_SMALL_MACHINE = 4
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def limit_blas_threads() -> Any:
    """Run calibration's numpy work on one BLAS thread on small machines (<= 4 cores), unless a
    ``*_NUM_THREADS`` variable says otherwise; returns the limiter to restore, or None.

    The matrices here are small (H is at most a few thousand wide), and on a 2-core machine that
    other work also loads, OpenBLAS's second thread made them 5-20x slower, not faster (a 512-wide
    Cholesky: 80 ms on 2 threads, 13 ms on 1; MobileNet-style 5 MB model, 128 samples: 35 s -> 21 s).
    Uses ``threadpoolctl`` when it is installed (scikit-learn brings it); otherwise nothing changes.
    """
    if (os.cpu_count() or 1) > BLAS_THREADS_SMALL_MACHINE or any(os.environ.get(k) for k in _BLAS_ENV):
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")
