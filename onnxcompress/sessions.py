"""The one place that builds ``onnxruntime.InferenceSession`` objects.

Every command (verify, bench, compress --verify-data, inspect) and the public ``testing`` helpers
get their sessions from :func:`make_session`, because compressed models only behave (fast, small,
correct) when the session is configured for them, and a bare ``InferenceSession(path)`` gets that
wrong in ways that are easy to miss:

* **Constant folding limit.** A compressed weight is a call to a decode function in domain
  ``ai.onnxcompress``; onnxruntime inlines it and constant-folds it to a dense initializer at
  session creation (graph optimization level BASIC or higher), so per-run latency equals the
  original model's. But ORT skips folding any node whose output exceeds 1 GiB and then *decodes on
  every run* (seconds per inference). We raise the limit with the session config key
  ``optimization.constant_folding_max_output_size_in_bytes`` (default here: 64 GiB, see
  :data:`DEFAULT_FOLDING_LIMIT_BYTES`). Measured with ORT 1.32 on a Tile producing 1.2 GB: default
  limit -> not folded, 3.7 s per run; key set to 16 GiB -> folded at load (4.0 s), 0.5 ms per run.
  The key is honoured in both directions (set to 1000 it stops a 16 KB fold). ORT silently ignores
  an unparsable value, so we only ever write integers.
* **External data.** A path is handed to ORT as a path so it finds ``.data`` files next to it. A
  model given as ``bytes`` or an ``onnx.ModelProto`` has no folder; when its tensors live in
  external files, pass ``external_data_dir`` and we set
  ``session.model_external_initializers_file_folder_path``. A proto above protobuf's 2 GiB limit is
  written to a temporary folder with external data and loaded from there.
* **Paths.** A path is checked by :func:`onnxcompress.model_io.check_input` (missing, folder,
  empty). An ``.onnxc`` container (recognised by its magic bytes, whatever its extension) is
  expanded by :func:`onnxcompress.model_io.open_model`; any other path goes to ORT as is. When ORT
  refuses a file, ``model_io`` diagnoses it, so a non-ONNX file or unsafe external data gives the
  same one-line message as every other subcommand.
* **Providers.** Short names are accepted (``cpu``, ``cuda``, ``tensorrt``/``trt``, ``rocm``,
  ``openvino``, ``dml``, ``coreml``, ``qnn``...). The default is CPU only, for reproducible numbers.
  A requested provider that this onnxruntime build lacks is an error (``ConfigError``, exit 2:
  "CUDAExecutionProvider requested but not available ...") unless ``allow_fallback=True``. ORT also
  falls back to CPU *silently* when, e.g., the CUDA libraries fail to load: after creation we
  compare ``session.get_providers()`` with the request and apply the same rule. Callers report
  ``session.get_providers()`` (what actually ran), never the request.
* **Host-decoded weights.** ``onnxcompress.load`` decodes the weights in numpy
  (:mod:`onnxcompress.passes.host_decode`) and passes them as ``external_initializers``: they
  reach ORT through ``SessionOptions.add_external_initializers`` (in place, no protobuf copy),
  so ORT has nothing left to fold.
* **Errors.** Any other ORT load failure becomes one ``InvalidModelError`` line naming the model.

Log severity defaults to errors only: ORT's warnings (e.g. about serializing optimized models) are
noise for our users.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxcompress import model_io
from onnxcompress.errors import ConfigError, InvalidModelError

if TYPE_CHECKING:  # onnx / onnxruntime are imported lazily: `onnxcompress --help` stays fast
    import numpy as np
    import onnx
    import onnxruntime as ort

#: Folding limit we set (bytes). ORT's own default is 1 GiB. Folding keeps intermediates alive until
#: the pass ends, so the real bound is memory; 64 GiB means "never skip for size" on today's models.
DEFAULT_FOLDING_LIMIT_BYTES: int = 64 << 30

FOLDING_LIMIT_KEY = "optimization.constant_folding_max_output_size_in_bytes"
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"

#: Short provider names accepted everywhere (case-insensitive), mapped to ORT's names.
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "cann": "CANNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "azure": "AzureExecutionProvider",
}

OPTIMIZATION_LEVELS = ("all", "extended", "basic", "disable")


def _ort():
    import onnxruntime

    return onnxruntime


def canonical_provider(name: str) -> str:
    """Map ``cuda`` / ``CUDA`` / ``CUDAExecutionProvider`` to ORT's spelling; unknown names raise."""
    key = name.strip()
    if not key:
        raise ConfigError("empty execution provider name")
    alias = PROVIDER_ALIASES.get(key.lower())
    if alias:
        return alias
    for full in set(PROVIDER_ALIASES.values()) | set(_ort().get_all_providers()):
        if full.lower() == key.lower() or full.lower() == key.lower() + "executionprovider":
            return full
    raise ConfigError(
        f"unknown execution provider {name!r}: use one of {', '.join(sorted(set(PROVIDER_ALIASES)))} "
        "or a full onnxruntime name such as CUDAExecutionProvider"
    )


def parse_providers(values: str | Iterable[str] | None) -> list[str] | None:
    """Parse CLI provider values: ``["cuda,cpu"]``, ``["cuda", "cpu"]`` or ``"cuda,cpu"``."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    names = [canonical_provider(part) for v in values for part in v.split(",") if part.strip()]
    return names or None


def resolve_providers(
    providers: str | Sequence[str | tuple[str, Mapping[str, Any]]] | None, *, allow_fallback: bool = False
) -> list[str | tuple[str, dict[str, Any]]]:
    """Canonicalize a provider request and check it against this onnxruntime build.

    ``None`` means CPU only. Entries may be ``(name, options)`` tuples, passed through to ORT. A
    provider this build lacks raises ``ConfigError`` (exit 2) unless ``allow_fallback``, in which
    case it is dropped (CPU is always appended last as the final fallback).
    """
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = set(_ort().get_available_providers())
    out: list[str | tuple[str, dict[str, Any]]] = []
    for entry in providers:
        if isinstance(entry, tuple):
            name, opts = canonical_provider(entry[0]), dict(entry[1])
        else:
            name, opts = canonical_provider(entry), None
        if name not in available:
            if allow_fallback:
                continue
            raise ConfigError(
                f"{name} requested but not available in this onnxruntime build "
                f"(available: {', '.join(sorted(available))}); install the matching onnxruntime "
                "package (e.g. onnxruntime-gpu) or allow fallback"
            )
        out.append((name, opts) if opts is not None else name)
    names = [e[0] if isinstance(e, tuple) else e for e in out]
    if "CPUExecutionProvider" not in names:
        out.append("CPUExecutionProvider")
    return out


def session_options(
    *,
    threads: int | None = None,
    optimization_level: str = "all",
    external_data_dir: str | os.PathLike[str] | None = None,
    folding_limit_bytes: int | None = DEFAULT_FOLDING_LIMIT_BYTES,
    optimized_model_path: str | os.PathLike[str] | None = None,
    log_severity: int = 3,
    config: Mapping[str, str] | None = None,
) -> ort.SessionOptions:
    """Build the ``SessionOptions`` compressed models need (see the module docstring for why)."""
    ort = _ort()
    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization_level not in levels:
        raise ConfigError(
            f"unknown optimization level {optimization_level!r}: use one of {', '.join(OPTIMIZATION_LEVELS)}"
        )
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[optimization_level]
    so.log_severity_level = log_severity
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if folding_limit_bytes is not None:
        so.add_session_config_entry(FOLDING_LIMIT_KEY, str(int(folding_limit_bytes)))
    if external_data_dir is not None:
        so.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(Path(external_data_dir).resolve()))
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, str(value))
    return so


def model_label(model: object) -> str:
    """A short human name for a model argument, for error messages and reports."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    if isinstance(model, (bytes, bytearray)):
        return f"<{len(model)} bytes>"
    name = getattr(getattr(model, "graph", None), "name", "") or "model"
    return f"<ModelProto {name}>"


def _one_line(exc: BaseException, limit: int = 400) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _create(model_arg: str | bytes, so, providers, label: str):
    ort = _ort()
    try:
        return ort.InferenceSession(model_arg, sess_options=so, providers=providers)
    except Exception as exc:  # noqa: BLE001 -- ORT raises pybind exception types; map them all
        msg = _one_line(exc)
        for prefix in ("[ONNXRuntimeError] : ",):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        raise InvalidModelError(f"onnxruntime cannot load {label}: {msg}") from None


def make_session(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto,
    *,
    providers: str | Sequence[str | tuple[str, Mapping[str, Any]]] | None = None,
    threads: int | None = None,
    optimization_level: str = "all",
    external_data_dir: str | os.PathLike[str] | None = None,
    folding_limit_bytes: int | None = DEFAULT_FOLDING_LIMIT_BYTES,
    allow_fallback: bool = False,
    optimized_model_path: str | os.PathLike[str] | None = None,
    log_severity: int = 3,
    config: Mapping[str, str] | None = None,
    external_initializers: Mapping[str, np.ndarray] | None = None,
) -> ort.InferenceSession:
    """Create an ``InferenceSession`` configured for compressed models.

    ``model`` is a path (``.onnx``, with external data beside it, or an ``.onnxc`` container),
    serialized bytes, or an ``onnx.ModelProto``. ``providers`` accepts short names (``"cuda"``);
    default CPU only. ``threads`` sets intra-op threads (inter-op 1). ``folding_limit_bytes=None``
    keeps ORT's 1 GiB default. ``optimized_model_path`` saves ORT's optimized (decoded) model, a
    fast-loading cache. ``config`` adds raw session config entries. ``external_initializers``
    supplies the data of placeholder initializers from memory (host-decoded weights, see
    :mod:`onnxcompress.passes.host_decode`); the session keeps the arrays alive.

    Raises ``InvalidModelError`` (load failure, one line), ``ConfigError`` (unknown or unavailable
    provider, bad option), ``ContainerError`` (a corrupt ``.onnxc``).
    Check ``session.get_providers()`` for what actually runs.
    """
    resolved = resolve_providers(providers, allow_fallback=allow_fallback)
    label = model_label(model)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    path: Path | None = None
    onnxruntime_reads_file: Path | None = None
    if isinstance(model, (str, os.PathLike)):
        path = model_io.check_input(model)
        if model_io.is_container(path):
            model = model_io.open_model(path)
            if external_data_dir is None:
                external_data_dir = path.parent
    try:
        if isinstance(model, (bytes, bytearray)):
            model_arg: str | bytes = bytes(model)
        elif isinstance(model, (str, os.PathLike)):
            # a plain .onnx goes to onnxruntime as a path: onnx is not imported, so a process that
            # only loads models (bench's stock worker, a deployment) holds no protobuf runtime
            model_arg = str(model)
            onnxruntime_reads_file = path
        else:  # an onnx.ModelProto
            import onnx

            if model.ByteSize() > model_io.PROTOBUF_LIMIT:
                tmp = tempfile.TemporaryDirectory(prefix="onnxcompress-")
                target = Path(tmp.name) / "model.onnx"
                onnx.save(model, str(target), save_as_external_data=True, location="model.onnx.data")
                model_arg = str(target)
            else:
                model_arg = model.SerializeToString()
        so = session_options(
            threads=threads,
            optimization_level=optimization_level,
            external_data_dir=external_data_dir if not isinstance(model_arg, str) else None,
            folding_limit_bytes=folding_limit_bytes,
            optimized_model_path=optimized_model_path,
            log_severity=log_severity,
            config=config,
        )
        kept: list[Any] = []
        if external_initializers:
            import numpy as np

            ort = _ort()
            names = list(external_initializers)
            kept = [_ortvalue(ort, np.ascontiguousarray(external_initializers[n])) for n in names]
            so.add_external_initializers(names, kept)
        try:
            session = _create(model_arg, so, resolved, label)
        except InvalidModelError:
            if onnxruntime_reads_file is not None:  # our message for what ORT refused, if ours
                model_io.open_model(onnxruntime_reads_file, load_external=False)
            raise
        if kept:  # onnxruntime reads these buffers in place: they must live as long as the session
            session._onnxcompress_external_initializers = kept
    finally:
        if tmp is not None:  # ORT has read the weights into memory: the temporary copy can go
            tmp.cleanup()
    _check_providers_ran(session, resolved, allow_fallback)
    return session


def _ortvalue(ort: Any, arr: np.ndarray) -> Any:
    """An OrtValue over ``arr``'s memory; numpy has no bfloat16, so ml_dtypes arrays go by bits."""
    if arr.dtype.name == "bfloat16":
        import onnx

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr.view("uint16"), onnx.TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(arr)


def _check_providers_ran(session, requested, allow_fallback: bool) -> None:
    """ORT drops a provider silently when its libraries fail to load: make that loud."""
    if allow_fallback:
        return
    ran = set(session.get_providers())
    for entry in requested:
        name = entry[0] if isinstance(entry, tuple) else entry
        if name not in ran:
            raise ConfigError(
                f"{name} requested but not available: onnxruntime could not initialize it (missing "
                f"CUDA/cuDNN or driver libraries?) and fell back to {', '.join(session.get_providers())}"
            )


def providers_used(session: ort.InferenceSession) -> list[str]:
    """The providers that actually run this session (what reports must show)."""
    return list(session.get_providers())
