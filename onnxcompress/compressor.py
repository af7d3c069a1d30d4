"""The compression pipeline: inventory -> plan -> methods -> encode -> passes -> report.

It only wires the stages: the plan is :func:`onnxcompress.config.plan`, each weight goes through
its method from :data:`onnxcompress.methods.METHODS` (or a calibration ``weight_hook``), the
groups are written into the graph by :mod:`onnxcompress.passes` (including the metadata stamp),
and the report types are in :mod:`onnxcompress.report`.

:func:`compress_model` works on an in-memory ModelProto and never touches files;
:func:`compress_file` adds loading, atomic saving (``.onnx`` or an ``.onnxc`` container) and the
file sizes in the report. Neither builds an onnxruntime session: verification lives elsewhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress import methods
from onnxcompress.config import CompressionConfig, WeightConfig, plan, preset, resolve_granularity
from onnxcompress.encoding import CodebookWeight, EncodedWeight, build_groups
from onnxcompress.errors import ConfigError, InvalidModelError, NoCompressibleWeightsError
from onnxcompress.inventory import WeightInfo, build_inventory, iter_graphs
from onnxcompress.methods.kmeans import shared_codebooks
from onnxcompress.methods.masks import global_threshold, keep_mask
from onnxcompress.passes import CheckModelPass, EncodeWeightsPass, PassManager, RaiseVersionsPass
from onnxcompress.passes.base import Pass
from onnxcompress.passes.check import CheckResult
from onnxcompress.passes.metadata import LoadExternalDataPass, StampMetadataPass
from onnxcompress.passes.versions import default_opset
from onnxcompress.progress import ProgressCallback, track
from onnxcompress.report import CompressionReport, CompressionResult, WeightReport, predicted_damage

__all__ = ["WeightHook", "check_external_data_output", "compress_file", "compress_model", "compress_weight"]


def _tensors(model: onnx.ModelProto, names: set[str]) -> dict[str, onnx.TensorProto]:
    """The TensorProto defining each of ``names`` (first definition found, initializers before
    Constant nodes, main graph first): references, not copies, so that each weight can be read
    into numpy only while it is being compressed."""
    out: dict[str, onnx.TensorProto] = {}
    for _, g in iter_graphs(model.graph):
        for t in g.initializer:
            if t.name in names and t.name not in out:
                out[t.name] = t
        for n in g.node:
            if n.op_type == "Constant" and n.output and n.output[0] in names and n.output[0] not in out:
                for a in n.attribute:
                    if a.name == "value":
                        out[n.output[0]] = a.t
    return out


def _read(tensor: onnx.TensorProto, external_dir: str | os.PathLike[str] | None) -> np.ndarray:
    """A weight as a numpy array. The external data of a model loaded without it is read from its
    file (``to_array`` leaves the TensorProto as it is), so it never sits in the ModelProto."""
    return numpy_helper.to_array(tensor, base_dir=str(external_dir) if external_dir is not None else "")


def _reader(
    tensors: dict[str, onnx.TensorProto], external_dir: str | os.PathLike[str] | None
) -> Callable[[str], np.ndarray]:
    """``name -> array`` over ``tensors`` (for the global pruning threshold's one pass)."""
    return lambda name: _read(tensors[name], external_dir)


def _rel_error(w: np.ndarray, dec: np.ndarray) -> float:
    """``||w - dec|| / ||w||`` in float64 with one float64 copy of ``w`` (``dec`` is subtracted in
    place) instead of three temporaries; the same operations in the same order, so the same value."""
    wf = w.astype(np.float64)
    denom = float(np.linalg.norm(wf))
    if not denom > 0:
        return 0.0
    np.subtract(wf, dec, out=wf)
    return float(np.linalg.norm(wf) / denom)


def compress_weight(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, *, global_t: float | None = None, seed: int = 0,
    ctx: methods.Context | None = None,
) -> tuple[EncodedWeight, np.ndarray]:  # fmt: skip
    """Compress one weight with its plan's method: its encoding and the exact array it decodes to.
    ``granularity: auto`` is resolved here too, for callers that bypass :func:`config.plan`.
    ``ctx`` (the model-wide context: global threshold, shared codebooks) replaces ``global_t`` and
    ``seed`` when given."""
    cfg = resolve_granularity(info, cfg)
    ctx = ctx or methods.Context(seed=seed, global_threshold=global_t)
    c = methods.compress(w, info, cfg, ctx)
    return methods.encode(info.name, c, encoding=cfg.encoding, gap_bits=cfg.gap_bits), methods.decompress(c)


#: ``(weight, info, setting) -> (encoding, decoded array)`` or None (the plain algorithm). For a
#: ``format: runtime`` weight the encoding is a ``passes.runtime_native.RuntimeWeight``.
WeightHook = Callable[[np.ndarray, WeightInfo, WeightConfig], "tuple[Any, np.ndarray] | None"]


def compress_model(
    model: onnx.ModelProto,
    config: CompressionConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    weight_hook: WeightHook | None = None,
    keep_decoded: bool = True,
    external_dir: str | os.PathLike[str] | None = None,
) -> CompressionResult:
    """Compress ``model`` in place and return it with its report.

    ``weight_hook`` lets calibration-aware methods take over a weight: it returns the encoding
    and decoded array, or None to fall back to the plain algorithm.

    Memory: weights are read from the ModelProto one at a time and released once compressed, so
    the peak is the model plus its compressed streams plus one weight's working set. The decoded
    arrays (``result.decoded``, 4 bytes per weight for fp32) are kept only with ``keep_decoded``
    (tests and verification compare against them); otherwise ``result.decoded`` is empty.
    ``external_dir``: the folder of a model loaded *without* its external data
    (``open_model(..., load_external=False)``); weights are then read straight from the data files,
    so they never sit in the ModelProto, and the data of the tensors left alone is loaded into the
    model once the compressed weights are gone from it.
    """
    t0 = time.perf_counter()
    config = config or preset("safe")
    inventory = build_inventory(model, min_elements=config.min_elements, code_vectors=config.code_vectors)
    planned, skipped = plan(inventory, config)
    runtime = [(i, c) for i, c in planned if c.format == "runtime"]  # onnxruntime-native, below
    if not planned:
        reasons = {r for _, r in skipped} or {"the model has no float tensors"}
        raise NoCompressibleWeightsError(
            "no compressible weight found (" + "; ".join(sorted(reasons))[:300] + "); "
            "lower min_elements or check the exclude patterns and the plan"
        )
    tensors = _tensors(model, {info.name for info, _ in planned})
    global_t = global_threshold(planned, _reader(tensors, external_dir))
    ctx = methods.Context(
        seed=config.seed, global_threshold=global_t,
        shared_codebooks=shared_codebooks(planned, _reader(tensors, external_dir), config.seed),
    )  # fmt: skip

    encoded: list[EncodedWeight] = []
    decoded: dict[str, np.ndarray] = {}
    reports: list[WeightReport] = []
    notes: list[str] = []
    rt_pass = _runtime_native(
        model, runtime, tensors, external_dir, global_t, reports, decoded, keep_decoded, weight_hook, notes
    )
    planned = [(i, c) for i, c in planned if c.format != "runtime"]
    for info, cfg in track(planned, "compressing weights", progress):
        out = _compress_one(_read(tensors[info.name], external_dir), info, cfg, weight_hook, ctx)
        if isinstance(out, str):
            skipped.append((info.name, out))
            continue
        enc, dec, row = out
        encoded.append(enc)
        reports.append(row)
        if keep_decoded:
            decoded[info.name] = dec
        del out, dec  # this weight's arrays go before the next is read (dec stays only in `decoded`)
        note = _codebook_overhead_note(enc, cfg)
        if note:
            notes.append(note)
    del tensors
    if not encoded and rt_pass is None:
        raise NoCompressibleWeightsError(
            "no weight became smaller under this plan (all weights are tiny or the settings keep too much); "
            "use fewer bits or more sparsity"
        )
    # Each compressed weight's arrays live in `encoded`, then in its group's streams, then in an
    # initializer: every step lets go of the one before, so the compressed model is held once.
    groups = build_groups(encoded)
    del encoded
    n_groups = len(groups)
    passes: list[Pass] = [RaiseVersionsPass(), EncodeWeightsPass(groups, consume=True)] if groups else []
    del groups
    if rt_pass is not None:  # format: runtime weights go first, the codebook stage handles the rest
        passes.insert(0, rt_pass)
    if external_dir is not None:
        passes.append(LoadExternalDataPass(external_dir))
    passes += [CheckModelPass(), StampMetadataPass(config)]
    model, results = PassManager(passes)(model)
    reported = {p.name for p in passes if p.reported}
    report = CompressionReport(
        weights=reports,
        skipped=skipped,
        groups=n_groups,
        seconds=time.perf_counter() - t0,
        passes={name: r.to_dict() for name, r in results if name in reported},
        notes=notes,
    )
    if weight_hook is None:  # calibrated weights trade their own error for the layer's output error
        damage = predicted_damage(reports)
        if damage:
            report.warnings.append(damage)
    return CompressionResult(
        model=model, report=report, decoded=decoded, passes=tuple(r for _, r in results)
    )


def _runtime_native(
    model: onnx.ModelProto, runtime: list[tuple[WeightInfo, WeightConfig]], tensors: dict[str, onnx.TensorProto],
    external_dir: str | os.PathLike[str] | None, global_t: float | None, reports: list[WeightReport],
    decoded: dict[str, np.ndarray], keep_decoded: bool, weight_hook: WeightHook | None = None,
    notes: list[str] | None = None,
) -> Pass | None:  # fmt: skip
    """Quantize the ``format: runtime`` weights (passes/runtime_native.py); their pass, or None.
    A weight hook (calibration) may hand over a weight's calibrated ``RuntimeWeight``. ``notes``
    gets one line when 8-bit MatMulNBits weights run below accuracy_level 4 (a slow kernel)."""
    if not runtime:
        return None
    from onnxcompress.passes import runtime_native as rn

    users, rws, opset = rn.consumers(model), [], default_opset(model)
    for info, cfg in runtime:
        w = _read(tensors[info.name], external_dir)
        hooked = weight_hook(w, info, cfg) if weight_hook is not None else None
        if hooked is not None and isinstance(hooked[0], rn.RuntimeWeight):
            rw, dec = hooked
        else:
            rw, dec = rn.quantize_planned(
                users, w, info, cfg.bits, cfg.block_size, keep_mask(w, info, cfg, global_t),
                activations=cfg.activations, opset=opset, per_channel=cfg.granularity != "tensor",
                accuracy_level=cfg.accuracy_level,
            )  # fmt: skip
        rws.append(rw)
        reports.append(WeightReport(
            name=info.name, op_types=info.op_types, role=info.role, shape=info.shape, params=info.size,
            setting=cfg.describe(), sparsity=float(np.mean(dec == 0)), bits=cfg.bits, encoding=f"runtime:{rw.kind}",
            bytes_before=w.nbytes, bytes_after=rw.nbytes, rel_error=_rel_error(w, dec),
        ))  # fmt: skip
        if keep_decoded:
            decoded[info.name] = dec
    slow = [rw.name for rw in rws if rw.kind in ("matmul", "gemm") and rw.codes.bits == 8 and rw.accuracy_level < 4]
    if slow and notes is not None:
        notes.append(
            f"{len(slow)} 8-bit MatMulNBits weight(s) ({slow[0]}{', ...' if len(slow) > 1 else ''}) run at "
            "accuracy_level < 4: onnxruntime's 8-bit kernel then computes in float, measured 16-20x slower "
            "than an fp32 MatMul (ORT 1.32 CPU, batch 1; 4-bit weights at level 1 stayed faster than fp32)"
        )
    return rn.RuntimeNativePass(rws)


def _compress_one(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, weight_hook: WeightHook | None, ctx: methods.Context
) -> tuple[EncodedWeight, np.ndarray, WeightReport] | str:
    """One weight: (encoding, decoded array, report row), or why it is left alone. A function of
    its own so that the weight and its temporaries are released when it returns."""
    out = weight_hook(w, info, cfg) if weight_hook is not None else None
    if out is not None and not isinstance(out[0], EncodedWeight):
        out = None  # a runtime-native encoding for a weight this plan encodes as a codebook
    enc, dec = out if out is not None else compress_weight(w, info, cfg, ctx=ctx)
    before = w.nbytes
    if enc.nbytes >= before:
        return f"compressed form ({enc.nbytes} B) would not be smaller than {before} B"
    report = WeightReport(
        name=info.name, op_types=info.op_types, role=info.role, shape=info.shape, params=info.size,
        setting=cfg.describe(), sparsity=float(np.mean(dec == 0)), bits=enc.bits, encoding=enc.kind,
        bytes_before=before, bytes_after=enc.nbytes, rel_error=_rel_error(w, dec),
        display_name=info.display_name(),
    )  # fmt: skip
    return enc, dec, report


# per-channel/group codebooks whose own bytes exceed this share of the weight's payload get a note
CODEBOOK_OVERHEAD_NOTE = 0.25


def _codebook_overhead_note(enc: EncodedWeight, cfg: WeightConfig) -> str | None:
    """Advice when per-channel codebooks eat the savings (an embedding table with short rows:
    each row's 2^bits-entry codebook costs about as much as the row itself)."""
    if not isinstance(enc, CodebookWeight) or cfg.granularity in ("tensor", "shared") or enc.nbytes <= 0:
        return None
    share = enc.codebook.nbytes / enc.nbytes
    if share <= CODEBOOK_OVERHEAD_NOTE:
        return None
    return (
        f"{enc.name}: its {len(enc.codebook):,} {cfg.granularity} codebooks are {share:.0%} of its "
        f"{enc.nbytes:,} bytes; per-tensor granularity for it would be smaller "
        f"(names: {{{enc.name!r}: {{granularity: tensor}}}}, or for embeddings op_types: {{Gather: {{granularity: tensor}}}})"
    )


def compress_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: CompressionConfig | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    weight_hook: WeightHook | None = None,
    hook_factory: Callable[[onnx.ModelProto], WeightHook | None] | None = None,
    keep_decoded: bool = False,
    model: onnx.ModelProto | None = None,
    external_data: bool | None = None,
) -> CompressionResult:
    """Load, compress and atomically save; ``.onnxc`` outputs go through the entropy-coded container.

    ``external_data=True`` writes the initializers to ``<output>.data`` beside the ``.onnx``
    (:func:`onnxcompress.model_io.save`), ``False`` writes one file, and ``None`` (the default)
    keeps the input's layout: external data when the input has it (or when the model would not fit
    in one protobuf). Why: onnxruntime
    reads (memory-maps where it can) external initializers from the file instead of copying them
    out of the protobuf, so a ``format: runtime`` model's session holds less private memory and is
    created faster (8-bit MLP 4x[2048,2048], against the fp32 model with external data: peak RSS
    x0.67 and creation x0.61, against x0.77 and x0.84 as one file; MiniLM 8-bit: peak RSS x0.88,
    model share x0.72, against x0.93 and x0.85 as one file).
    An ``.onnxc`` output refuses it (:class:`~onnxcompress.errors.ConfigError`): the container
    holds the whole model.

    ``model``: the input already opened by the caller (``model_io.open_model(input_path,
    load_external=hook_factory is not None)``), so that a caller that read it first (the CLI's plan
    check) does not parse the file a second time; it is compressed in place.

    ``hook_factory`` builds the weight hook from the loaded model (calibration needs the model,
    and may edit its biases in place: it gets the very ModelProto that is then compressed).
    ``keep_decoded``: fill ``result.decoded`` (4 bytes per compressed fp32 weight held to the end;
    off by default, the saved file is the result).

    Without a ``hook_factory`` the external data is not loaded up front: each weight is read from
    its data file when it is compressed (see :func:`compress_model`), so a model with external data
    never has all its weights in memory at once.
    """
    from onnxcompress import model_io
    from onnxcompress.passes.host_decode import has_decode_nodes

    t0 = time.perf_counter()
    check_external_data_output(output_path, external_data)
    out = model_io.check_output(output_path, inputs=[input_path], overwrite=overwrite)
    lazy = hook_factory is None  # a factory (calibration) may run the model: it needs all the data
    if model is None:
        model = model_io.open_model(input_path, load_external=not lazy)
    if has_decode_nodes(model):
        raise InvalidModelError(
            f"{input_path}: already compressed by onnxcompress (it has ai.onnxcompress decode nodes); "
            "compress the original model instead"
        )
    if hook_factory is not None:
        weight_hook = hook_factory(model) or weight_hook
    result = compress_model(
        model, config, progress=progress, weight_hook=weight_hook, keep_decoded=keep_decoded,
        external_dir=Path(input_path).parent if lazy else None,
    )  # fmt: skip
    size_before = model_io.size_on_disk(input_path)
    if external_data is None and size_before > Path(input_path).stat().st_size:
        external_data = True  # the input keeps its weights in data files: so does the output
    if out.suffix == ".onnxc":
        from onnxcompress.container import write_container

        stats = write_container(result.model, out, original_bytes=size_before)
        result.container = stats
        result.report.extra["container"] = _plain(stats)
    else:
        model_io.save(result.model, out, external_data=external_data)
        if any(isinstance(r, CheckResult) and r.deferred for r in result.passes):
            from onnxcompress.passes.check import check_saved_model

            try:
                check_saved_model(str(out))
            except Exception:
                out.unlink(missing_ok=True)
                Path(str(out) + ".data").unlink(missing_ok=True)
                raise
    result.report.file_bytes_before = size_before
    result.report.file_bytes_after = model_io.size_on_disk(out)
    result.report.output = str(out)
    result.report.seconds = time.perf_counter() - t0  # the whole job: loading, calibration, saving
    return result


def check_external_data_output(output_path: str | os.PathLike[str], external_data: bool | None) -> None:
    """Refuse ``external_data=True`` for an ``.onnxc`` output before any work (the container is one
    self-contained file: ``pack`` inlines external data)."""
    if external_data and Path(output_path).suffix == ".onnxc":
        raise ConfigError(
            f"{output_path}: an .onnxc container holds the whole model and has no external data; "
            "drop --external-data, or write an .onnx output"
        )


def _plain(obj: Any) -> Any:
    """Best-effort conversion of a stats object to JSON-friendly data."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)
