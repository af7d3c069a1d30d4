"""Compression plan configuration.

A plan is a global :class:`WeightConfig`, overridden per consumer op type (``Conv``, ``MatMul``,
...), then per weight name (exact or glob). Overrides are *partial*: they name only the fields
they change and are merged onto the level above, so ``op_types: {Conv: {bits: 8}}`` keeps the
global sparsity. An override of ``None`` skips the weight. This mirrors coremltools'
``OptimizationConfig`` (global / op type / op name) but with merging, which reads better in YAML.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from onnxcompress import methods
from onnxcompress.algorithms.codebook import CODEBOOK_DTYPES, GRANULARITIES
from onnxcompress.algorithms.kmeans1d import INITS
from onnxcompress.errors import ConfigError
from onnxcompress.methods import METHODS
from onnxcompress.methods.masks import PRUNINGS

if TYPE_CHECKING:
    from onnxcompress.inventory import Inventory, WeightInfo

ENCODINGS = ("auto", "dense", "relative", "mask")
FORMATS = ("codebook", "runtime")  # runtime: onnxruntime-native affine codes (passes/runtime_native.py)
#: ``int8``: format runtime's MatMul/Gemm/Conv weights computed with int8 activations quantized at run
#: time (MatMulInteger/ConvInteger, passes/runtime_native.py); ``float``: everything else
ACTIVATIONS = ("float", "int8")
#: ``accuracy_level`` of the ``com.microsoft.MatMulNBits`` nodes (format runtime's MatMul/Gemm weights):
#: the precision onnxruntime computes in. 0: unset (onnxruntime picks; fp32 on CPU), 1: fp32, 2: fp16,
#: 3: bf16, 4: int8 activations quantized inside the kernel (the fast path, the default)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
#: ``shared``: one codebook shared by every such weight of the model, times a per-weight scale
#: (:mod:`onnxcompress.algorithms.scaled_codebook`). ``auto``: per channel, per group of channels,
#: per tensor or shared, whichever codebooks pay for themselves
#: (:func:`onnxcompress.granularity.cost_aware_granularity`), resolved per weight by :func:`plan`
#: from its shape, bits and codebook dtype.
GRANULARITY_CHOICES = (*GRANULARITIES, "shared", "auto")

#: The allowed values of every WeightConfig field that is a choice, each defined once beside the
#: code that implements it; plan validation and the CLI's ``choices=`` both read this.
CHOICES: dict[str, tuple[str, ...]] = {
    "method": tuple(METHODS),
    "pruning": PRUNINGS,
    "granularity": GRANULARITY_CHOICES,
    "init": INITS,
    "encoding": ENCODINGS,
    "codebook_dtype": CODEBOOK_DTYPES,
    "format": FORMATS,
    "activations": ACTIVATIONS,
}


@dataclass(frozen=True)
class WeightConfig:
    """How one weight is compressed.

    ``method``: a name in :data:`onnxcompress.methods.METHODS`: ``kmeans`` (Deep Compression weight sharing), ``clipq`` (CLIP-Q clip-and-quantize:
    the pruning fraction is ``sparsity`` and the range of the rest is split into equal intervals),
    or ``prune`` (pruning only, kept values stored raw). ``sparsity`` is the fraction of weights set
    to zero, chosen by ``pruning``: ``magnitude`` (per layer), ``global`` (one threshold across all
    weights that use it), ``std`` (Deep Compression's ``quality x std``; ``sparsity`` is ignored),
    ``nm`` (``n`` of every ``m`` consecutive weights along the input axis kept).
    """

    method: str = "kmeans"
    bits: int = 8
    sparsity: float = 0.0
    pruning: str = "magnitude"
    quality: float = 1.0
    n: int = 2
    m: int = 4
    granularity: str = "tensor"
    group_size: int = 8
    init: str = "linear"
    codebook_dtype: str = "float32"
    encoding: str = "auto"
    gap_bits: int | None = None
    format: str = "codebook"
    block_size: int = 32  # format: runtime, values per scale along the reduction axis
    # the largest share of a weight's index bytes its own codebooks may take: granularity auto
    # picks the finest granularity within it (1/8 when unset); with granularity tensor, a weight
    # whose one codebook would exceed it shares a scaled codebook instead (unset: never)
    codebook_share: float | None = None
    # format: runtime, int8: dynamic int8 activations (8-bit weights); the weight scale is one per
    # tensor with granularity tensor (onnxruntime's fastest path), else one per output channel
    activations: str = "float"
    # format: runtime, MatMulNBits (MatMul/Gemm weights with float activations): 4 quantizes the
    # activations to int8 inside the kernel (fast; MiniLM-L6 8-bit: nearest-neighbour agreement
    # 0.970 on the test sentences, benchmarks/runtime.py), 1 computes in fp32 (0.988 there; slower,
    # and at 8 bits much slower: see docs/format.md). Ignored by every other rewrite and by format codebook, as block_size is, so a
    # global level can sit under op_types overrides that choose the format.
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        method = methods.get(self.method)  # the live table, so a row added at run time counts too
        for name, choices in CHOICES.items():
            if name != "method":
                _check_choice(name, getattr(self, name), choices)
        _check_int("bits", self.bits, 1, 8)
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= float(self.sparsity) < 1.0:
            raise ConfigError(
                f"sparsity must be a fraction in [0, 1), got {self.sparsity!r} (e.g. 0.9 prunes 90%)"
            )
        if not isinstance(self.quality, (int, float)) or self.quality < 0:
            raise ConfigError(f"quality must be a non-negative number, got {self.quality!r}")
        _check_int("m", self.m, 1, 64)
        _check_int("n", self.n, 1, self.m)
        _check_int("group_size", self.group_size, 1, 1 << 30)
        if self.gap_bits is not None:
            _check_int("gap_bits", self.gap_bits, 1, 8)
        if self.format == "runtime" and (self.bits not in (2, 4, 8) or not method.quantizes):
            raise ConfigError(
                f"format runtime needs bits 2, 4 or 8 and a quantizing method (got bits {self.bits}, "
                f"method {self.method}); use format codebook for other settings"
            )
        if self.activations == "int8" and (self.format != "runtime" or self.bits != 8):
            raise ConfigError(
                f"activations int8 needs format runtime and bits 8 (got format {self.format}, bits {self.bits}); "
                "4-bit runtime weights already compute with int8 activations inside MatMulNBits"
            )
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of 2 and at least 16, got {self.block_size!r}")
        level = self.accuracy_level
        if isinstance(level, bool) or not isinstance(level, int) or level not in ACCURACY_LEVELS:
            raise ConfigError(
                f"accuracy_level must be an integer from 0 to 4, got {level!r} "
                "(4: int8 activations inside MatMulNBits, fastest; 1: fp32 activations, more accurate)"
            )
        if self.codebook_share is not None and (
            isinstance(self.codebook_share, bool)
            or not isinstance(self.codebook_share, (int, float))
            or not 0 < self.codebook_share <= 1
        ):
            raise ConfigError(
                f"codebook_share must be a fraction in (0, 1] or null, got {self.codebook_share!r} "
                "(e.g. 0.015625: codebooks may cost 1/64 of a weight's index bytes)"
            )
        if self.granularity == "shared" and not self.can_share:
            raise ConfigError(
                "granularity shared needs method kmeans, no pruning and format codebook; "
                "use granularity tensor for this weight"
            )
        if method.needs_pruning and not self.prunes:
            raise ConfigError(
                f"method {self.method!r} needs pruning: set sparsity > 0 (or pruning: std / nm)"
            )

    @property
    def prunes(self) -> bool:
        return self.pruning in ("std", "nm") or self.sparsity > 0

    @property
    def quantizes(self) -> bool:
        return methods.get(self.method).quantizes

    @property
    def can_share(self) -> bool:
        """A shared scaled codebook can hold this setting's weights (dense k-means codes)."""
        return self.method == "kmeans" and not self.prunes and self.format == "codebook"

    def describe(self) -> str:
        parts: list[str] = [self.method]
        if self.prunes:
            parts.append(
                {"std": f"std x{self.quality:g}", "nm": f"{self.n}:{self.m}"}.get(
                    self.pruning, f"{self.pruning} {self.sparsity:.0%}"
                )
            )
        if self.format == "runtime":
            parts[0] = "runtime"
            per = "tensor" if self.granularity == "tensor" else "channel"
            parts.append(
                f"w8a8/{per}" if self.activations == "int8"
                else f"{self.bits}b/block{self.block_size}/acc{self.accuracy_level}"
            )  # fmt: skip
        elif self.quantizes:
            parts.append(f"{self.bits}b/{self.granularity}")
        return " ".join(parts)


FIELDS = {f.name for f in dataclasses.fields(WeightConfig)}


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer from {lo} to {hi}, got {value!r}")


def _validate_override(where: str, override: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if override is None:
        return None
    if not isinstance(override, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings or null (to skip), got {override!r}")
    unknown = set(override) - FIELDS
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FIELDS))}"
        )
    try:
        dataclasses.replace(WeightConfig(), **override)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return dict(override)


@dataclass(frozen=True)
class CompressionConfig:
    """The whole plan. ``weight`` is the global setting; ``op_types`` and ``names`` are overrides."""

    weight: WeightConfig = field(default_factory=WeightConfig)
    op_types: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    names: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    min_elements: int = 256
    seed: int = 0
    #: also code 1-D tensors (biases, normalization scales and shifts; not BatchNormalization
    #: variances) of 16+ elements, on the shared scaled codebook: smaller, no longer exact
    code_vectors: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.weight, WeightConfig):
            raise ConfigError("weight must be a WeightConfig")
        for key, ov in self.op_types.items():
            _validate_override(f"op_types.{key}", ov)
        for key, ov in self.names.items():
            _validate_override(f"names.{key}", ov)
        _check_int("min_elements", self.min_elements, 0, 1 << 62)
        if not isinstance(self.code_vectors, bool):
            raise ConfigError(f"code_vectors must be true or false, got {self.code_vectors!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "op_types", dict(self.op_types))
        object.__setattr__(self, "names", dict(self.names))

    def resolve(self, name: str, op_types: tuple[str, ...]) -> WeightConfig | None:
        """Setting for one weight, or None to skip it. Later levels win; within a level the first
        matching op type (in consumer order) and the exact name before globs (in file order).

        ``pruning: global`` computes one magnitude threshold at the plan's sparsity; a weight
        whose ``sparsity`` an op_types or names override sets is taken out of that pool and pruned
        by magnitude at its own sparsity (so ``Conv: {sparsity: 0.5}`` under a global 0.8 prunes
        each Conv weight by half)."""
        if any(fnmatch.fnmatchcase(name, pat) for pat in self.exclude):
            return None
        cfg: WeightConfig | None = self.weight
        own_sparsity = False  # an op_types / names override sets this weight's sparsity
        for op in op_types:
            if op in self.op_types:
                ov = self.op_types[op]
                cfg = _apply(cfg, ov)
                own_sparsity = ov is not None and "sparsity" in ov
                break
        override = self._name_override(name)
        if override is not _MISSING:
            cfg = _apply(cfg if cfg is not None else self.weight, override)
            own_sparsity = own_sparsity or (override is not None and "sparsity" in override)
        if cfg is not None and own_sparsity and cfg.pruning == "global":
            # one threshold cannot give this weight its own sparsity: it leaves the global pool and
            # is pruned by magnitude at the sparsity its override asks for
            cfg = dataclasses.replace(cfg, pruning="magnitude")
        return cfg

    def _name_override(self, name: str) -> Any:
        if name in self.names:
            return self.names[name]
        for pat, ov in self.names.items():
            if fnmatch.fnmatchcase(name, pat):
                return ov
        return _MISSING

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": dataclasses.asdict(self.weight),
            "op_types": dict(self.op_types),
            "names": dict(self.names),
            "exclude": list(self.exclude),
            "min_elements": self.min_elements,
            "seed": self.seed,
            "code_vectors": self.code_vectors,
        }


_MISSING = object()


def plan(
    inventory: Inventory, config: CompressionConfig
) -> tuple[list[tuple[WeightInfo, WeightConfig]], list[tuple[str, str]]]:
    """Resolve the setting of every compressible weight; the rest with the reason they are skipped."""
    planned: list[tuple[WeightInfo, WeightConfig]] = []
    skipped: list[tuple[str, str]] = []
    chosen: list[int] = []  # indices in planned of weights the cost rule (not the plan) put on shared
    for info in inventory.weights:
        if not info.compressible:
            skipped.append((info.name, info.skip_reason or ""))
            continue
        cfg = config.resolve(info.name, info.op_types)
        if cfg is None:
            skipped.append((info.name, "excluded by the plan"))
        elif info.role == "vector":  # code_vectors: a table per vector never pays, a shared one does
            if cfg.can_share and info.dtype == "float32":
                planned.append((info, dataclasses.replace(cfg, granularity="shared")))
            else:
                skipped.append((info.name, "1-D tensor: code_vectors needs a k-means setting without pruning"))
        else:
            resolved = resolve_granularity(info, cfg)
            if resolved.granularity == "shared" and cfg.granularity != "shared":
                chosen.append(len(planned))
            planned.append((info, resolved))
    return _unshare_where_it_does_not_pay(planned, chosen), skipped


#: about what the ``CodebookScaled`` function body adds to a model that stores no other use of it
SHARED_BODY_BYTES = 1024


def _unshare_where_it_does_not_pay(
    planned: list[tuple[WeightInfo, WeightConfig]], chosen: list[int]
) -> list[tuple[WeightInfo, WeightConfig]]:
    """Give the weights the cost rule put on a shared codebook their own tables back when sharing
    saves less than the decode function it needs (one or two small weights: LeNet's last layer)."""
    from onnxcompress.granularity import codebook_bytes

    if not chosen or any(c.granularity == "shared" for i, (_, c) in enumerate(planned) if i not in set(chosen)):
        return planned  # nothing chosen, or the plan shares weights anyway: the body is paid for
    keys = {(planned[i][1].bits, planned[i][1].codebook_dtype) for i in chosen}
    saved = sum(codebook_bytes(planned[i][1].bits, planned[i][1].codebook_dtype) + 4 for i in chosen)
    saved -= sum(codebook_bytes(bits, dtype) for bits, dtype in keys) + 4 * len(chosen)  # tables, scales
    if saved >= SHARED_BODY_BYTES:
        return planned
    out = list(planned)
    for i in chosen:
        out[i] = (planned[i][0], dataclasses.replace(planned[i][1], granularity="tensor"))
    return out


def resolve_granularity(info: WeightInfo, cfg: WeightConfig) -> WeightConfig:
    """``cfg`` with ``granularity: auto`` replaced by the cost-aware choice for ``info``'s shape
    (the finest granularity whose codebooks cost at most ``codebook_share``, default an eighth, of
    the index bytes; ``shared`` when even one codebook for the whole tensor costs more), and
    ``granularity: tensor`` with a ``codebook_share`` replaced by ``shared`` where one codebook
    costs more than that share; any other setting is returned as it is. Why: a 2**bits-entry
    codebook per short row costs more than the row, and one per small tensor (a 3x3 depthwise
    filter bank, a squeeze-excite layer) costs a large part of it."""
    from onnxcompress.granularity import DEFAULT_SHARE, cost_aware_granularity, tensor_codebook_pays

    share = cfg.codebook_share if cfg.codebook_share is not None else DEFAULT_SHARE
    can_share = cfg.can_share and info.dtype == "float32"  # fp16/bf16 weights keep their own dtype
    if cfg.granularity == "auto":
        granularity, group = cost_aware_granularity(
            info.shape, info.axis, cfg.bits, cfg.codebook_dtype, share, can_share=can_share
        )
        if granularity == "group":
            return dataclasses.replace(cfg, granularity="group", group_size=group)
        return dataclasses.replace(cfg, granularity=granularity)
    if (
        cfg.granularity == "tensor"
        and cfg.codebook_share is not None
        and can_share
        and not tensor_codebook_pays(info.size, cfg.bits, cfg.codebook_dtype, share)
    ):
        return dataclasses.replace(cfg, granularity="shared")
    return cfg


def _apply(cfg: WeightConfig | None, override: Mapping[str, Any] | None) -> WeightConfig | None:
    if override is None:
        return None
    return dataclasses.replace(cfg if cfg is not None else WeightConfig(), **override)


# Named presets. "safe" is the default: 8-bit per-tensor k-means, no pruning (about 4x smaller,
# no measurable accuracy change on the shipped models).
PRESETS: dict[str, dict[str, Any]] = {
    # a weight whose own 8-bit codebook would cost more than 1/64 of its codes shares one scaled
    # codebook with the other such weights (small convolutions, squeeze-excite, recurrent cells)
    "safe": {"weight": {"bits": 8, "codebook_share": 1 / 64}},
    # 6-bit codebooks per channel where a channel's codebook costs at most 1/8 of its indices,
    # per group of channels or per tensor elsewhere (granularity.py); fp16 codebook entries
    "balanced": {
        "weight": {"bits": 6, "granularity": "auto", "codebook_dtype": "float16"},
        "op_types": {"Gather": {"granularity": "tensor"}},
    },
    # one magnitude threshold across layers prunes big layers harder and spares small ones:
    # LeNet-5 14.0x within 1 point of fp32 with no retraining
    "small": {"weight": {"bits": 5, "sparsity": 0.75, "pruning": "global"}},
    "deep-compression": {
        # the paper's LeNet settings: 8% of weights kept, 8-bit conv, 6-bit fc codebooks, 5-bit
        # relative index. The paper retrains after each step; post-training, pair it with
        # calibration data or expect an accuracy drop.
        "weight": {"bits": 6, "sparsity": 0.92, "gap_bits": 5},
        "op_types": {"Conv": {"bits": 8}},
    },
    "clipq": {"weight": {"method": "clipq", "bits": 5, "sparsity": 0.5}},
}
DEFAULT_PRESET = "safe"

#: What a user of a preset must know when it runs without calibration data (printed by
#: ``compress`` as a warning). Numbers: benchmarks/deep_compression.py, docs/benchmarks.md.
PRESET_CAVEATS: dict[str, str] = {
    "deep-compression": (
        "the deep-compression preset is the paper's setting, and the paper retrains the network "
        "after pruning and after quantizing; post-training (no retraining, no calibration data) it "
        "gives 57% / 31% / 10% top-1 on the shipped LeNet-300-100 / LeNet-5 / resnet digit models "
        "(fp32: 98-99.7%). Give --calibration-data, or use --preset balanced"
    ),
}


def from_dict(data: Mapping[str, Any], base: CompressionConfig | None = None) -> CompressionConfig:
    """Build a config from a plain mapping (parsed YAML/JSON), on top of ``base``."""
    if not isinstance(data, Mapping):
        raise ConfigError("a config file must hold a mapping at the top level")
    # "calibration" belongs to onnxcompress.calibration.config, "structured" to
    # onnxcompress.structured.config: each is read there
    known = {"preset", "weight", "op_types", "names", "exclude", "min_elements", "seed", "calibration", "code_vectors"}
    known.add("structured")
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}"
        )
    if "preset" in data:
        base = preset(data["preset"])
    base = base or CompressionConfig()
    weight_override = _validate_override("weight", data.get("weight", {}) or {})
    weight = dataclasses.replace(base.weight, **(weight_override or {}))
    exclude = data.get("exclude", base.exclude)
    if isinstance(exclude, str):
        exclude = (exclude,)
    for key in ("op_types", "names"):
        if not isinstance(data.get(key, {}) or {}, Mapping):
            raise ConfigError(f"{key} must be a mapping")
    return CompressionConfig(
        weight=weight,
        op_types={**base.op_types, **(data.get("op_types") or {})},
        names={**base.names, **(data.get("names") or {})},
        exclude=tuple(exclude),
        min_elements=data.get("min_elements", base.min_elements),
        seed=data.get("seed", base.seed),
        code_vectors=data.get("code_vectors", base.code_vectors),
    )


def preset(name: str) -> CompressionConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return from_dict({k: v for k, v in PRESETS[name].items()}, CompressionConfig())


def read_plan_file(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or JSON plan file into a mapping (one reader for every
    section: compression settings here, ``calibration:`` in onnxcompress.calibration)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    is_yaml = path.endswith((".yaml", ".yml"))
    try:
        if is_yaml:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text or "{}")
    except Exception as exc:  # yaml/json both raise their own error families
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"config file {path} is not valid {'YAML' if is_yaml else 'JSON'}: {first}"
        ) from None
    data = data or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load_config(path: str | os.PathLike[str], base: CompressionConfig | None = None) -> CompressionConfig:
    """Read the compression settings of a YAML/JSON plan file."""
    return from_dict(read_plan_file(path), base)
