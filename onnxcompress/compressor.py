"""The compression pipeline: inventory -> plan -> algorithms -> encode -> passes -> report.

:func:`compress_model` works on an in-memory ModelProto and never touches files;
:func:`compress_file` adds loading, atomic saving (``.onnx`` or an ``.onnxc`` container) and the
file sizes in the report. Neither builds an onnxruntime session: verification lives elsewhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from onnxcompress import __version__
from onnxcompress.algorithms import codebook, pruning
from onnxcompress.config import CompressionConfig, WeightConfig, preset
from onnxcompress.encoding import EncodedWeight, build_groups, encode_codebook, encode_pruned
from onnxcompress.errors import NoCompressibleWeightsError
from onnxcompress.inventory import Inventory, WeightInfo, build_inventory, iter_graphs
from onnxcompress.passes import CheckModelPass, EncodeWeightsPass, PassManager, RaiseVersionsPass
from onnxcompress.passes.base import Pass, PassResult
from onnxcompress.passes.versions import default_opset
from onnxcompress.progress import track


@dataclass(frozen=True)
class WeightReport:
    name: str
    op_types: tuple[str, ...]
    role: str
    shape: tuple[int, ...]
    params: int
    setting: str
    sparsity: float  # fraction of exact zeros after compression
    bits: int | None
    encoding: str
    bytes_before: int
    bytes_after: int
    rel_error: float  # ||W - W_hat|| / ||W||


@dataclass
class CompressionReport:
    weights: list[WeightReport]
    skipped: list[tuple[str, str]]
    groups: int
    seconds: float
    passes: dict[str, Any] = field(default_factory=dict)
    file_bytes_before: int | None = None
    file_bytes_after: int | None = None
    output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # advice on the plan (printed under the table)

    @property
    def params(self) -> int:
        return sum(w.params for w in self.weights)

    @property
    def weight_bytes_before(self) -> int:
        return sum(w.bytes_before for w in self.weights)

    @property
    def weight_bytes_after(self) -> int:
        return sum(w.bytes_after for w in self.weights)

    @property
    def ratio(self) -> float | None:
        if self.file_bytes_before and self.file_bytes_after:
            return self.file_bytes_before / self.file_bytes_after
        return None

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes_after / max(self.params, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnxcompress_version": __version__,
            "output": self.output,
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
            "ratio": self.ratio,
            "params_compressed": self.params,
            "weight_bytes_before": self.weight_bytes_before,
            "weight_bytes_after": self.weight_bytes_after,
            "bits_per_weight": self.bits_per_weight,
            "decode_groups": self.groups,
            "seconds": self.seconds,
            "weights": [asdict(w) for w in self.weights],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "passes": self.passes,
            "notes": list(self.notes),
            **self.extra,
        }


@dataclass
class CompressionResult:
    model: onnx.ModelProto
    report: CompressionReport
    decoded: dict[str, np.ndarray]  # what each weight decodes to (numpy reference), if keep_decoded
    container: Any = None  # ContainerStats when written as .onnxc (the entropy-coding staircase)


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


def _rel_error(w: np.ndarray, dec: np.ndarray) -> float:
    """``||w - dec|| / ||w||`` in float64 with one float64 copy of ``w`` (``dec`` is subtracted in
    place) instead of three temporaries; the same operations in the same order, so the same value."""
    wf = w.astype(np.float64)
    denom = float(np.linalg.norm(wf))
    if not denom > 0:
        return 0.0
    np.subtract(wf, dec, out=wf)
    return float(np.linalg.norm(wf) / denom)


def pruning_mask(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, global_t: float | None
) -> np.ndarray | None:
    """The keep-mask the plain algorithms use for ``w`` (None when ``cfg`` does not prune)."""
    if not cfg.prunes:
        return None
    if cfg.pruning == "magnitude":
        return pruning.magnitude_mask(w, cfg.sparsity)
    if cfg.pruning == "global":
        assert global_t is not None
        return pruning.threshold_mask(w, global_t)
    if cfg.pruning == "std":
        return pruning.threshold_mask(w, pruning.std_threshold(w, cfg.quality))
    if info.role in ("conv", "conv_transpose") and w.ndim > 2:
        # the reduction runs over input channels x kernel window: N:M blocks along that flattened dim
        moved = np.moveaxis(w, info.axis, 0)
        mask = pruning.nm_mask(moved.reshape(moved.shape[0], -1), cfg.n, cfg.m, axis=1)
        return np.moveaxis(mask.reshape(moved.shape), 0, info.axis)
    return pruning.nm_mask(w, cfg.n, cfg.m, axis=info.input_axis)


def compress_weight(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, *, global_t: float | None = None, seed: int = 0,
    mask: np.ndarray | None = None,
) -> tuple[EncodedWeight, np.ndarray]:  # fmt: skip
    """Compress one weight; returns its encoding and the exact array it decodes to."""
    if mask is None:
        mask = pruning_mask(w, info, cfg, global_t)
    # Only per-channel/group codebooks need the channel axis in front (contiguous segments); other
    # weights decode in their natural order, which saves a Transpose per weight at load time.
    axis = info.axis if cfg.quantizes and cfg.granularity != "tensor" else 0
    if cfg.method == "prune":
        assert mask is not None
        p = pruning.compress(w, mask)
        enc = encode_pruned(
            info.name, p, 0, shape=tuple(w.shape), encoding=cfg.encoding, gap_bits=cfg.gap_bits
        )
        return enc, pruning.decompress(p)
    if cfg.method == "clipq":
        from onnxcompress.algorithms import clipq

        ct = clipq.compress(
            w, sparsity=cfg.sparsity, bits=cfg.bits, granularity=cfg.granularity, axis=axis,
            group_size=cfg.group_size, codebook_dtype=cfg.codebook_dtype,
        )  # fmt: skip
    else:
        ct = codebook.quantize(
            w, bits=cfg.bits, mask=mask, granularity=cfg.granularity, axis=axis, group_size=cfg.group_size,
            init=cfg.init, codebook_dtype=cfg.codebook_dtype, seed=seed,
        )  # fmt: skip
    enc = encode_codebook(info.name, ct, encoding=cfg.encoding, gap_bits=cfg.gap_bits)
    return enc, codebook.decompress(ct)


def plan(
    inventory: Inventory, config: CompressionConfig
) -> tuple[list[tuple[WeightInfo, WeightConfig]], list[tuple[str, str]]]:
    """Resolve the config for every compressible weight; the rest with the reason they are skipped."""
    planned: list[tuple[WeightInfo, WeightConfig]] = []
    skipped: list[tuple[str, str]] = []
    for info in inventory.weights:
        if not info.compressible:
            skipped.append((info.name, info.skip_reason or ""))
            continue
        cfg = config.resolve(info.name, info.op_types)
        if cfg is None:
            skipped.append((info.name, "excluded by the plan"))
        else:
            planned.append((info, cfg))
    return planned, skipped


WeightHook = Callable[[np.ndarray, WeightInfo, WeightConfig], "tuple[EncodedWeight, np.ndarray] | None"]


def compress_model(
    model: onnx.ModelProto,
    config: CompressionConfig | None = None,
    *,
    progress: bool = False,
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
    (``load_model(..., load_external=False)``); weights are then read straight from the data files,
    so they never sit in the ModelProto, and the data of the tensors left alone is loaded into the
    model once the compressed weights are gone from it.
    """
    t0 = time.perf_counter()
    config = config or preset("safe")
    inventory = build_inventory(model, min_elements=config.min_elements)
    planned, skipped = plan(inventory, config)
    runtime = [(i, c) for i, c in planned if c.format == "runtime"]  # onnxruntime-native, below
    if not planned:
        reasons = {r for _, r in skipped} or {"the model has no float tensors"}
        raise NoCompressibleWeightsError(
            "no compressible weight found (" + "; ".join(sorted(reasons))[:300] + "); "
            "lower --min-elements or check --exclude and the config"
        )
    tensors = _tensors(model, {info.name for info, _ in planned})
    global_t = None
    glob = [i.name for i, c in planned if c.prunes and c.pruning == "global"]
    if glob:
        sparsities = {c.sparsity for i, c in planned if c.prunes and c.pruning == "global"}
        global_t = pruning.global_threshold((_read(tensors[n], external_dir) for n in glob), max(sparsities))

    encoded: list[EncodedWeight] = []
    decoded: dict[str, np.ndarray] = {}
    reports: list[WeightReport] = []
    notes: list[str] = []
    rt_pass = _runtime_native(model, runtime, tensors, external_dir, global_t, reports, decoded, keep_decoded)
    planned = [(i, c) for i, c in planned if c.format != "runtime"]
    for info, cfg in track(planned, "compressing weights", enabled=progress):
        out = _compress_one(
            _read(tensors[info.name], external_dir), info, cfg, weight_hook, global_t, config.seed
        )
        if isinstance(out, str):
            skipped.append((info.name, out))
            continue
        enc, dec, report = out
        encoded.append(enc)
        reports.append(report)
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
        passes.append(_LoadExternalDataPass(external_dir))
    model, results = PassManager([*passes, CheckModelPass()])(model)
    _stamp(model, config)
    report = CompressionReport(
        weights=reports,
        skipped=skipped,
        groups=n_groups,
        seconds=time.perf_counter() - t0,
        passes={name: r.details for name, r in results if name != _LoadExternalDataPass.name},
        notes=notes,
    )
    return CompressionResult(model=model, report=report, decoded=decoded)


def _compress_one(
    w: np.ndarray, info: WeightInfo, cfg: WeightConfig, weight_hook: WeightHook | None,
    global_t: float | None, seed: int,
) -> tuple[EncodedWeight, np.ndarray, WeightReport] | str:  # fmt: skip
    """One weight: (encoding, decoded array, report row), or why it is left alone. A function of
    its own so that the weight and its temporaries are released when it returns."""
    out = weight_hook(w, info, cfg) if weight_hook is not None else None
    enc, dec = out if out is not None else compress_weight(w, info, cfg, global_t=global_t, seed=seed)
    before = w.nbytes
    if enc.nbytes >= before:
        return f"compressed form ({enc.nbytes} B) would not be smaller than {before} B"
    report = WeightReport(
        name=info.name, op_types=info.op_types, role=info.role, shape=info.shape, params=info.size,
        setting=cfg.describe(), sparsity=float(np.mean(dec == 0)), bits=enc.bits, encoding=enc.kind,
        bytes_before=before, bytes_after=enc.nbytes, rel_error=_rel_error(w, dec),
    )  # fmt: skip
    return enc, dec, report


def _runtime_native(
    model: onnx.ModelProto, runtime: list[tuple[WeightInfo, WeightConfig]], tensors: dict[str, onnx.TensorProto],
    external_dir: str | os.PathLike[str] | None, global_t: float | None, reports: list[WeightReport],
    decoded: dict[str, np.ndarray], keep_decoded: bool,
) -> Pass | None:  # fmt: skip
    """Quantize the ``format: runtime`` weights (passes/runtime_native.py); their pass, or None."""
    if not runtime:
        return None
    from onnxcompress.passes import runtime_native as rn

    users, rws = rn.consumers(model), []
    for info, cfg in runtime:
        w = _read(tensors[info.name], external_dir)
        rw, dec = rn.quantize_planned(users, w, info, cfg.bits, cfg.block_size, pruning_mask(w, info, cfg, global_t))
        rw.opset = default_opset(model)
        rws.append(rw)
        reports.append(WeightReport(
            name=info.name, op_types=info.op_types, role=info.role, shape=info.shape, params=info.size,
            setting=cfg.describe(), sparsity=float(np.mean(dec == 0)), bits=cfg.bits, encoding=f"runtime:{rw.kind}",
            bytes_before=w.nbytes, bytes_after=rw.nbytes, rel_error=_rel_error(w, dec),
        ))  # fmt: skip
        if keep_decoded:
            decoded[info.name] = dec
    return rn.RuntimeNativePass(rws)


class _LoadExternalDataPass(Pass):
    """Load the external data of the tensors left in the model (after the compressed weights have
    been replaced, so their data is never read into the ModelProto)."""

    name = "load-external-data"

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = str(base_dir)

    def call(self, model: onnx.ModelProto) -> PassResult:
        load_external_data_for_model(model, self.base_dir)
        return PassResult(model, True)


# per-channel/group codebooks whose own bytes exceed this share of the weight's payload get a note
CODEBOOK_OVERHEAD_NOTE = 0.25


def _codebook_overhead_note(enc: EncodedWeight, cfg: WeightConfig) -> str | None:
    """Advice when per-channel codebooks eat the savings (an embedding table with short rows:
    each row's 2^bits-entry codebook costs about as much as the row itself)."""
    if enc.codebook is None or cfg.granularity == "tensor" or enc.nbytes <= 0:
        return None
    share = enc.codebook.nbytes / enc.nbytes
    if share <= CODEBOOK_OVERHEAD_NOTE:
        return None
    return (
        f"{enc.name}: its {len(enc.codebook):,} {cfg.granularity} codebooks are {share:.0%} of its "
        f"{enc.nbytes:,} bytes; per-tensor granularity for it would be smaller "
        f"(names: {{{enc.name!r}: {{granularity: tensor}}}}, or for embeddings op_types: {{Gather: {{granularity: tensor}}}})"
    )


def _stamp(model: onnx.ModelProto, config: CompressionConfig) -> None:
    """Record the producing tool and plan in metadata, keeping the user's own entries."""
    import json

    entries = {p.key: p for p in model.metadata_props}
    # only what differs from the defaults of this version: `from_dict` rebuilds the full plan, and
    # small models feel every byte (the full record is ~370 B, 1% of a 25x LeNet-300-100)
    plan, default = config.to_dict(), CompressionConfig().to_dict()
    diff: dict[str, object] = {k: v for k, v in plan.items() if v != default[k] and k != "weight"}
    weight = {k: v for k, v in plan["weight"].items() if v != default["weight"][k]}
    if weight:
        diff["weight"] = weight
    value = json.dumps(
        {"version": __version__, "config": diff}, sort_keys=True, default=str, separators=(",", ":")
    )
    if "onnxcompress" in entries:
        entries["onnxcompress"].value = value
    else:
        model.metadata_props.add(key="onnxcompress", value=value)


def compress_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: CompressionConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = False,
    weight_hook: WeightHook | None = None,
    hook_factory: Callable[[onnx.ModelProto], WeightHook | None] | None = None,
    keep_decoded: bool = False,
) -> CompressionResult:
    """Load, compress and atomically save; ``.onnxc`` outputs go through the entropy-coded container.

    ``hook_factory`` builds the weight hook from the loaded model (calibration needs the model,
    and may edit its biases in place: it gets the very ModelProto that is then compressed).
    ``keep_decoded``: fill ``result.decoded`` (4 bytes per compressed fp32 weight held to the end;
    off by default, the saved file is the result).

    Without a ``hook_factory`` the external data is not loaded up front: each weight is read from
    its data file when it is compressed (see :func:`compress_model`), so a model with external data
    never has all its weights in memory at once.
    """
    from onnxcompress.model_io import check_output_path, load_model, model_file_size, save_model

    t0 = time.perf_counter()
    check_output_path(input_path, output_path, overwrite=overwrite)
    lazy = hook_factory is None  # a factory (calibration) may run the model: it needs all the data
    model = load_model(input_path, load_external=not lazy)
    if hook_factory is not None:
        weight_hook = hook_factory(model) or weight_hook
    result = compress_model(
        model, config, progress=progress, weight_hook=weight_hook, keep_decoded=keep_decoded,
        external_dir=Path(input_path).parent if lazy else None,
    )  # fmt: skip
    out = Path(output_path)
    if out.suffix == ".onnxc":
        from onnxcompress.container import write_container

        stats = write_container(result.model, out)
        result.container = stats
        result.report.extra["container"] = _plain(stats)
    else:
        save_model(result.model, out)
        if "deferred" in result.report.passes.get("check", {}):
            from onnxcompress.passes.check import check_saved_model

            try:
                check_saved_model(str(out))
            except Exception:
                out.unlink(missing_ok=True)
                Path(str(out) + ".data").unlink(missing_ok=True)
                raise
    result.report.file_bytes_before = model_file_size(input_path)
    result.report.file_bytes_after = model_file_size(out) if out.suffix != ".onnxc" else out.stat().st_size
    result.report.output = str(out)
    result.report.seconds = time.perf_counter() - t0  # the whole job: loading, calibration, saving
    return result


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
