"""Evaluation data: where the inputs for verify and bench come from, streamed in batches.

Three sources, all yielding :class:`Batch` objects of at most ``batch_size`` samples, so a data set
larger than memory (a folder of files) is never loaded whole:

* an ``.npz`` file keyed by input name (or holding one array for a one-input model), with labels
  under a key you name (default ``labels`` when present);
* a folder of ``.npy`` / ``.npz`` files (sorted by name), each a batch of samples, or a single sample
  when its rank is one less than the input's;
* synthetic inputs drawn from the model's input spec when no data is given: floats ~ N(0, 1),
  integers uniform in ``int_range`` (default ``[0, 10)``, set it for token ids), booleans fair coins.
  Symbolic dims need ``--shape name=1x3x224x224`` (leading dim = batch) or ``--shape dim_name=128``.

Conventions, checked with one clear :class:`~onnxcompress.errors.DataError` each: every input's
batch axis is read from the graph (:func:`assign_batch_axes`: the symbolic leading dim, wherever
another input holds it, so a recurrent ``state [2, batch, 128]`` is sliced on axis 1; axis 0 when
nothing says otherwise); a 0-d
array (a scalar input such as a sample rate) is a constant, fed whole to every batch; fixed dims must match; dtypes are converted only within a kind (float
to float, integer to integer when the values fit) because feeding uint8 pixels to a float model
silently gives garbage. A model whose batch axis is fixed (e.g. 1) gets batches of that size, the
last one padded by repeating its final sample (padded rows carry ``valid < len``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxcompress.errors import DataError

DEFAULT_INT_RANGE: tuple[int, int] = (0, 10)

_ORT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """A model input: name, numpy dtype (None when not a plain numeric tensor) and shape."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...]
    type_name: str = ""
    batch_axis: int = 0  # the axis samples are stacked on (see assign_batch_axes)
    # declared rank 0 in the graph (onnxruntime reports unknown ranks as [] too, so not compared)
    scalar: bool = dataclasses.field(default=False, compare=False)

    @property
    def batch_fixed(self) -> int | None:
        """The fixed batch size when the batch dim is a number, else None."""
        d = self.shape[self.batch_axis] if len(self.shape) > self.batch_axis else None
        return d if isinstance(d, int) and d > 0 else None


def assign_batch_axes(specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """``specs`` with each input's batch axis read from the graph.

    The batch dim is the symbol at axis 0 of the first input that has one there (the usual
    convention); every input holding that symbol elsewhere is batched there: a recurrent
    ``state [2, batch, 128]`` beside ``input [batch, samples]`` is batched on axis 1. Other inputs keep
    axis 0. With no symbolic leading dim and fixed leading dims that disagree (``input [1, 512]``,
    ``state [2, 1, 128]``), an input whose leading dim differs from the first input's is batched on
    its first axis of that size. Rank-0 (or unknown-rank) specs keep axis 0; a 0-d *array* is a
    constant whatever the spec says.
    """
    specs = list(specs)
    axes = [0] * len(specs)
    batch = next((s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)), None)
    ranked = [i for i, s in enumerate(specs) if s.shape]
    if batch is not None:
        for i in ranked:
            if batch in specs[i].shape:
                axes[i] = specs[i].shape.index(batch)
    elif ranked:
        lead = specs[ranked[0]].shape[0]
        if isinstance(lead, int):
            for i in ranked[1:]:
                shape = specs[i].shape
                if shape[0] != lead and lead in shape:
                    axes[i] = shape.index(lead)
    return [
        dataclasses.replace(s, batch_axis=ax) if ax != s.batch_axis else s
        for s, ax in zip(specs, axes, strict=True)
    ]


def input_specs(session: Any) -> list[TensorSpec]:
    """Input specs of an onnxruntime session (symbolic or unknown dims kept as str / None)."""
    specs = []
    for node in session.get_inputs():
        dtype = _ORT_TYPES.get(node.type)
        shape = tuple(d if isinstance(d, (int, str)) or d is None else None for d in (node.shape or ()))
        specs.append(
            TensorSpec(
                node.name, np.dtype(dtype) if dtype else None, tuple(_norm_dim(d) for d in shape), node.type
            )
        )
    return assign_batch_axes(specs)


def model_input_specs(model: Any) -> list[TensorSpec]:
    """Input specs read from an ``onnx.ModelProto`` (no session needed): its graph inputs that are
    not initializers, typed as onnxruntime would report them."""
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            specs.append(TensorSpec(vi.name, None, (), vi.type.WhichOneof("value") or ""))
            continue
        tt = vi.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
        except (KeyError, TypeError):
            dtype = None
        type_name = next((k for k, v in _ORT_TYPES.items() if dtype is not None and np.dtype(v) == dtype), "")
        dims: list[Dim] = []
        for d in tt.shape.dim if tt.HasField("shape") else ():
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        specs.append(
            TensorSpec(
                vi.name, dtype if type_name else None, tuple(_norm_dim(x) for x in dims), type_name,
                scalar=tt.HasField("shape") and not dims,
            )  # fmt: skip
        )
    return assign_batch_axes(specs)


def _norm_dim(d: Dim) -> Dim:
    if isinstance(d, int) and d <= 0:
        return None
    return d


@dataclass
class Batch:
    """One batch: inputs by name, optional labels, and how many leading rows are real samples."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    valid: int


# --------------------------------------------------------------------------- parsing helpers


def parse_shape_overrides(values: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``name=1x3x224x224`` items (also ``name=1,3,224,224``). Names may be inputs or dims."""
    out: dict[str, tuple[int, ...]] = {}
    for raw in values or ():
        for item in raw.split(";"):
            if not item.strip():
                continue
            name, sep, dims = item.partition("=")
            if not sep or not name.strip():
                raise DataError(f"bad --shape {item!r}: expected NAME=AxBxC, e.g. input=1x3x224x224")
            try:
                shape = tuple(int(d) for d in re.split(r"[x,]", dims.strip().lower()) if d != "")
            except ValueError:
                raise DataError(
                    f"bad --shape {item!r}: dims must be positive integers, e.g. 1x3x224x224"
                ) from None
            if not shape or any(d <= 0 for d in shape):
                raise DataError(f"bad --shape {item!r}: dims must be positive integers, e.g. 1x3x224x224")
            out[name.strip()] = shape
    return out


def parse_int_range(values: str | Sequence[str] | None) -> dict[str, tuple[int, int]]:
    """Parse ``lo:hi`` (all integer inputs) or ``name=lo:hi`` items; ``hi`` is exclusive.

    The result maps input names (``""`` for the default) to ``(lo, hi)``.
    """
    if values is None:
        return {}
    if isinstance(values, str):
        values = [values]
    out: dict[str, tuple[int, int]] = {}
    for item in values:
        name, sep, rng = item.rpartition("=")
        lo_s, colon, hi_s = rng.partition(":")
        try:
            lo, hi = int(lo_s), int(hi_s)
        except ValueError:
            lo = hi = 0
            colon = ""
        if not colon or hi <= lo:
            raise DataError(
                f"bad --int-range {item!r}: expected LO:HI with LO < HI (HI exclusive), e.g. 0:30522"
            )
        out[name.strip() if sep else ""] = (lo, hi)
    return out


# --------------------------------------------------------------------------- array checks


def _can_hold(dtype: np.dtype, arr: np.ndarray) -> bool:
    if arr.size == 0:
        return True
    info = np.iinfo(dtype)
    return bool(arr.min() >= info.min and arr.max() <= info.max)


def _batch_word(spec: TensorSpec) -> str:
    return "first axis = batch" if spec.batch_axis == 0 else f"axis {spec.batch_axis} = batch"


def conform(arr: np.ndarray, spec: TensorSpec, origin: str, *, batched: bool = True) -> np.ndarray:
    """Check ``arr`` (samples stacked on the spec's batch axis; a 0-d array is a constant) against
    ``spec`` and convert its dtype if safe."""
    arr = np.asarray(arr)
    if spec.dtype is None:
        raise DataError(f"input {spec.name!r} has type {spec.type_name}, which verify/bench cannot feed")
    if arr.dtype.kind in "OUS":
        raise DataError(
            f"{origin}: array for input {spec.name!r} has dtype {arr.dtype}, expected {spec.dtype}"
        )
    if spec.scalar and arr.ndim != 0:
        raise DataError(
            f"{origin}: input {spec.name!r} is a scalar (shape []): give it as one 0-d value, which every "
            f"batch uses (got an array of shape {tuple(arr.shape)})"
        )
    if spec.shape and arr.ndim != len(spec.shape):
        raise DataError(
            f"{origin}: array for input {spec.name!r} has shape {tuple(arr.shape)}, but the model expects "
            f"rank {len(spec.shape)} {_fmt_shape(spec.shape)} ({_batch_word(spec)})"
        )
    for axis, (have, want) in enumerate(zip(arr.shape, spec.shape, strict=False)):
        if axis == spec.batch_axis and batched:
            continue
        if isinstance(want, int) and have != want:
            raise DataError(
                f"{origin}: array for input {spec.name!r} has shape {tuple(arr.shape)}, but the model expects "
                f"{_fmt_shape(spec.shape)} (axis {axis} must be {want}; {_batch_word(spec)})"
            )
    if arr.dtype == spec.dtype:
        return arr
    src, dst = arr.dtype.kind, spec.dtype.kind
    if src == "f" and dst == "f":
        return arr.astype(spec.dtype)
    if src in "iu" and dst in "iu":
        if not _can_hold(spec.dtype, arr):
            raise DataError(
                f"{origin}: values of input {spec.name!r} do not fit the model's dtype {spec.dtype}"
            )
        return arr.astype(spec.dtype)
    if src == "b" and dst == "b":
        return arr
    raise DataError(
        f"{origin}: array for input {spec.name!r} has dtype {arr.dtype}, but the model expects {spec.dtype} "
        "(convert and normalize it yourself: verify only converts within floats or within integers)"
    )


def _fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _labels_array(arr: np.ndarray, origin: str, key: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] > 1:  # one-hot or probability rows
        arr = arr.argmax(axis=1)
    elif arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{origin}: labels {key!r} must be [N] class ids or [N, C] one-hot, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{origin}: labels {key!r} must be integer class ids")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise DataError(f"{origin}: labels {key!r} have dtype {arr.dtype}, expected integer class ids")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- sources


class DataSource:
    """Base class: ``chunks()`` yields (inputs, labels) of any size; ``batches()`` rebatches them."""

    description: str = "data"
    has_labels: bool = False
    labels_key: str | None = None

    def __init__(self, specs: Sequence[TensorSpec]) -> None:
        self.specs = list(specs)
        self._axes = {s.name: s.batch_axis for s in self.specs}

    def batch_axis(self, name: str, value: np.ndarray) -> int | None:
        """The axis samples of input ``name`` are stacked on; None for a constant (a 0-d array)."""
        if np.ndim(value) == 0:
            return None
        ax = self._axes.get(name, 0)
        return ax if ax < np.ndim(value) else 0

    def count(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Samples in a chunk of inputs (1 when every input is a constant)."""
        for k, v in inputs.items():
            ax = self.batch_axis(k, v)
            if ax is not None:
                return int(v.shape[ax])
        return 1

    def take(self, inputs: Mapping[str, np.ndarray], index: slice | np.ndarray) -> dict[str, np.ndarray]:
        """Samples ``index`` (a slice or positions) of every batched input; constants unchanged."""
        out = {}
        for k, v in inputs.items():
            ax = self.batch_axis(k, v)
            if ax is None:
                out[k] = v
            elif isinstance(index, slice):
                out[k] = v[(slice(None),) * ax + (index,)]
            else:
                out[k] = np.take(v, index, axis=ax)
        return out

    def unpadded(self, batch: Batch) -> dict[str, np.ndarray]:
        """The inputs of ``batch`` without its padded samples, unless the model fixes the batch size
        (a fixed-batch model cannot run a shorter batch: its padding repeats the last sample)."""
        if batch.valid >= self.count(batch.inputs) or any(s.batch_fixed for s in self.specs):
            return batch.inputs
        return self.take(batch.inputs, slice(0, batch.valid))

    def __len__(self) -> int:  # number of samples, for progress
        raise NotImplementedError

    def chunks(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        raise NotImplementedError

    def batch_size_for(self, requested: int | None, default: int) -> int:
        """The batch size to use: a fixed batch dim wins; an explicit conflicting request is an error."""
        fixed = {b for s in self.specs if (b := s.batch_fixed) is not None}
        if len(fixed) > 1:
            raise DataError(f"inputs disagree on their fixed batch size: {sorted(fixed)}")
        if fixed:
            (b,) = fixed
            if requested is not None and requested != b:
                raise DataError(
                    f"the model's batch axis is fixed to {b}; --batch-size {requested} cannot apply"
                )
            return b
        size = default if requested is None else requested
        if size < 1:
            raise DataError(f"batch size must be >= 1, got {size}")
        return size

    def batches(self, batch_size: int, *, limit: int | None = None) -> Iterator[Batch]:
        """Stream batches of exactly ``batch_size`` rows except the last (padded if the dim is fixed)."""
        pad = any(s.batch_fixed for s in self.specs)
        pending: list[tuple[dict[str, np.ndarray], np.ndarray | None]] = []
        count = 0
        seen = 0
        consts: dict[str, np.ndarray] = {}
        for inputs, labels in self.chunks():
            n = self.count(inputs)
            now = {k: v for k, v in inputs.items() if self.batch_axis(k, v) is None}
            if pending and any(k not in consts or not np.array_equal(v, consts[k]) for k, v in now.items()):
                # a constant (e.g. a sample rate) changed between files: never mix them in a batch
                yield self._join(pending, batch_size, pad)
                pending, count = [], 0
            consts = now
            if limit is not None and seen + n > limit:
                n = limit - seen
                inputs = self.take(inputs, slice(0, n))
                labels = None if labels is None else labels[:n]
            seen += n
            start = 0
            while start < n:
                take = min(batch_size - count, n - start)
                pending.append(
                    (
                        self.take(inputs, slice(start, start + take)),
                        None if labels is None else labels[start : start + take],
                    )
                )
                count += take
                start += take
                if count == batch_size:
                    yield self._join(pending, batch_size, pad)
                    pending, count = [], 0
            if limit is not None and seen >= limit:
                break
        if pending:
            yield self._join(pending, batch_size, pad)

    def _join(self, parts: list[tuple[dict[str, np.ndarray], np.ndarray | None]], size: int, pad: bool) -> Batch:
        names = parts[0][0].keys()
        inputs = {}
        for k in names:
            v0 = parts[0][0][k]
            ax = self.batch_axis(k, v0)
            inputs[k] = v0 if len(parts) == 1 or ax is None else np.concatenate([p[0][k] for p in parts], axis=ax)
        labels = None
        if parts[0][1] is not None:
            labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
        valid = sum(self.count(p[0]) for p in parts)
        if pad and valid < size:
            idx = np.concatenate([np.arange(valid), np.full(size - valid, valid - 1)])
            inputs = self.take(inputs, idx)
            if labels is not None:
                labels = labels[idx]
        return Batch({k: np.ascontiguousarray(v) if v.ndim else v for k, v in inputs.items()}, labels, valid)


def _match_keys(
    keys: Sequence[str], specs: Sequence[TensorSpec], labels_key: str | None, origin: str
) -> dict[str, str]:
    """Map input names to array keys: by name, or the single non-label array for a one-input model."""
    names = [s.name for s in specs]
    data_keys = [k for k in keys if k != labels_key]
    if all(n in keys for n in names):
        return {n: n for n in names}
    if len(names) == 1 and len(data_keys) == 1:
        return {names[0]: data_keys[0]}
    missing = [n for n in names if n not in keys]
    raise DataError(
        f"{origin}: no array for model input(s) {', '.join(map(repr, missing))}; the file has "
        f"{', '.join(map(repr, keys)) or 'no arrays'} (key arrays by input name"
        + (", or use --labels KEY for the labels)" if len(names) == 1 else ")")
    )


class ArraySource(DataSource):
    """In-memory arrays (a dict keyed by input name, plus an optional labels entry)."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        specs: Sequence[TensorSpec],
        *,
        labels_key: str | None = None,
        origin: str = "arrays",
    ) -> None:
        super().__init__(specs)
        keys = list(arrays.keys())
        if labels_key is not None and labels_key not in keys:
            raise DataError(f"{origin}: no labels array {labels_key!r}; it has {', '.join(map(repr, keys))}")
        if labels_key is None and "labels" in keys and not any(s.name == "labels" for s in specs):
            labels_key = "labels"
        self.labels_key = labels_key
        self.has_labels = labels_key is not None
        self.description = origin
        mapping = _match_keys(keys, specs, labels_key, origin)
        self._inputs = {s.name: conform(arrays[mapping[s.name]], s, origin) for s in specs}
        counts = {}
        for name, a in self._inputs.items():
            ax = self.batch_axis(name, a)
            if ax is not None:  # a 0-d array is a constant: it has no samples to count
                counts[name if ax == 0 else f"{name} (axis {ax})"] = int(a.shape[ax])
        self._labels = _labels_array(arrays[labels_key], origin, labels_key) if labels_key else None
        if self._labels is not None:
            counts[f"labels {labels_key!r}"] = len(self._labels)
        if len(set(counts.values())) > 1:
            raise DataError(f"{origin}: arrays disagree on the number of samples: {counts}")
        self._n = next(iter(counts.values()), 1)
        if self._n == 0:
            raise DataError(f"{origin}: holds no samples")

    def __len__(self) -> int:
        return self._n

    def chunks(self):
        yield self._inputs, self._labels


class NpzSource(ArraySource):
    """One ``.npz`` file (loaded key by key; use a folder of files for data larger than memory)."""

    def __init__(
        self, path: str | os.PathLike[str], specs: Sequence[TensorSpec], *, labels_key: str | None = None
    ):
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {path} as .npz: {exc}") from None
        super().__init__(arrays, specs, labels_key=labels_key, origin=str(path))


def _npy_shape_in_zip(zf: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    with zf.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fh)
    return shape


class DirectorySource(DataSource):
    """A folder of ``.npy`` / ``.npz`` files, read one file at a time (sorted by file name).

    ``.npz`` files are keyed as for :class:`NpzSource`; ``.npy`` files suit one-input models. A file
    whose arrays have the input's rank holds a batch; one rank lower holds a single sample.
    """

    def __init__(
        self, path: str | os.PathLike[str], specs: Sequence[TensorSpec], *, labels_key: str | None = None
    ):
        super().__init__(specs)
        self.path = Path(path)
        self.description = str(self.path)
        self.files = sorted(
            p for p in self.path.iterdir() if p.suffix.lower() in (".npy", ".npz") and p.is_file()
        )
        if not self.files:
            raise DataError(f"{self.path}: no .npy or .npz files in this folder")
        has_npy = any(p.suffix.lower() == ".npy" for p in self.files)
        if has_npy and len(specs) != 1:
            raise DataError(
                f"{self.path}: .npy files only suit one-input models; this model has inputs "
                f"{', '.join(s.name for s in specs)}: use .npz files keyed by input name"
            )
        self._explicit_labels = labels_key
        self._counts: list[int] = []
        label_files = 0
        for f in self.files:
            n, has_lab = self._scan(f, labels_key)
            self._counts.append(n)
            label_files += has_lab
        if labels_key is not None and label_files != len(self.files):
            raise DataError(f"{self.path}: labels {labels_key!r} missing from some files")
        if (
            labels_key is None
            and label_files == len(self.files)
            and not any(s.name == "labels" for s in specs)
        ):
            labels_key = "labels"
        self.labels_key = labels_key
        self.has_labels = labels_key is not None

    def _rank(self) -> int | None:
        return len(self.specs[0].shape) if self.specs[0].shape else None

    def _scan(self, f: Path, labels_key: str | None) -> tuple[int, bool]:
        try:
            if f.suffix.lower() == ".npy":
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
                return self._samples(arr.shape, self.specs[0]), False
            with zipfile.ZipFile(f) as zf:
                members = {m[:-4]: m for m in zf.namelist() if m.endswith(".npy")}
                mapping = _match_keys(list(members), self.specs, labels_key or "labels", str(f))
                n = 1  # every array 0-d: one sample of constants
                for spec in self.specs:  # the first input that is not a constant counts the samples
                    shape = _npy_shape_in_zip(zf, members[mapping[spec.name]])
                    if shape:
                        n = self._samples(shape, spec)
                        break
                return n, (labels_key or "labels") in members
        except DataError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read {f}: {exc}") from None

    @staticmethod
    def _samples(shape: tuple[int, ...], spec: TensorSpec) -> int:
        if spec.shape and len(shape) == len(spec.shape) - 1:
            return 1
        ax = spec.batch_axis if spec.batch_axis < len(shape) else 0
        return shape[ax] if shape else 1

    def __len__(self) -> int:
        return sum(self._counts)

    def chunks(self):
        for f in self.files:
            if f.suffix.lower() == ".npy":
                arrays = {self.specs[0].name: np.load(f, allow_pickle=False)}
            else:
                with np.load(f, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            for s in self.specs:
                key = s.name if s.name in arrays else None
                if key is None and len(self.specs) == 1:
                    others = [k for k in arrays if k != self.labels_key]
                    key = others[0] if len(others) == 1 else None
                if key is not None and s.shape and arrays[key].ndim == len(s.shape) - 1:
                    arrays[key] = np.expand_dims(arrays[key], s.batch_axis)
                    if self.labels_key and self.labels_key in arrays:
                        arrays[self.labels_key] = np.atleast_1d(arrays[self.labels_key])
            src = ArraySource(arrays, self.specs, labels_key=self.labels_key, origin=str(f))
            yield from src.chunks()


class SyntheticSource(DataSource):
    """Random inputs from the model's input spec (seeded: reference and candidate see the same data)."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        *,
        samples: int = 64,
        shapes: Mapping[str, Sequence[int]] | None = None,
        int_range: Mapping[str, tuple[int, int]] | tuple[int, int] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(specs)
        if samples < 1:
            raise DataError(f"--samples must be >= 1, got {samples}")
        self._n = samples
        self.seed = seed
        shapes = dict(shapes or {})
        if isinstance(int_range, tuple):
            int_range = {"": int_range}
        self._ranges = dict(int_range or {})
        unknown = [k for k in self._ranges if k and k not in {s.name for s in specs}]
        if unknown:
            raise DataError(
                f"--int-range names unknown input(s) {unknown}; inputs: {[s.name for s in specs]}"
            )
        self.sample_shapes = resolve_sample_shapes(specs, shapes)
        axes = {s.name: s.batch_axis for s in specs}
        self.shape_batch = {
            n: shapes[n][axes[n]] for n in shapes if n in self.sample_shapes and len(shapes[n]) > axes[n]
        }
        self.description = f"synthetic inputs (seed {seed})"

    def batch_size_for(self, requested: int | None, default: int) -> int:
        if requested is None and self.shape_batch and not any(s.batch_fixed for s in self.specs):
            sizes = set(self.shape_batch.values())
            if len(sizes) == 1:
                return sizes.pop()
        return super().batch_size_for(requested, default)

    def __len__(self) -> int:
        return self._n

    def make(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = {}
        for s in self.specs:
            sample = self.sample_shapes[s.name]
            ax = min(s.batch_axis, len(sample))
            shape = (*sample[:ax], n, *sample[ax:])
            assert s.dtype is not None
            kind = s.dtype.kind
            if kind == "f":
                out[s.name] = rng.standard_normal(shape, dtype=np.float32).astype(s.dtype)
            elif kind in "iu":
                lo, hi = self._ranges.get(s.name, self._ranges.get("", DEFAULT_INT_RANGE))
                info = np.iinfo(s.dtype)
                if lo < info.min or hi - 1 > info.max:
                    raise DataError(f"--int-range {lo}:{hi} does not fit input {s.name!r} of dtype {s.dtype}")
                out[s.name] = rng.integers(lo, hi, size=shape, dtype=np.int64).astype(s.dtype)
            else:
                out[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        return out

    def chunks(self):
        rng = np.random.default_rng(self.seed)
        left = self._n
        while left > 0:  # bounded chunks: synthetic data streams too
            n = min(left, 1024)
            yield self.make(n, rng), None
            left -= n


def resolve_sample_shapes(
    specs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes (batch axis dropped) with symbolic dims bound from ``--shape`` overrides.

    An override keyed by input name gives the full shape (batch dim included, on the input's batch
    axis); one keyed by a
    symbolic dim name (``seq=128``) binds that dim in every input that uses it.
    """
    names = {s.name for s in specs}
    bound: dict[str, int] = {}
    for key, dims in shapes.items():
        if key not in names:
            if len(dims) != 1:
                raise DataError(
                    f"--shape {key}=...: {key!r} is not an input ({', '.join(sorted(names))}); a symbolic dim "
                    "binding takes one number, e.g. seq=128"
                )
            bound[key] = int(dims[0])
    for s in specs:  # bind symbols named by full-shape overrides so other inputs sharing them follow
        if s.name in shapes:
            dims = shapes[s.name]
            if s.shape and len(dims) != len(s.shape):
                raise DataError(
                    f"--shape {s.name}={'x'.join(map(str, dims))} has rank {len(dims)}, but input {s.name!r} "
                    f"is {_fmt_shape(s.shape)}"
                )
            for want, have in zip(s.shape, dims, strict=False):
                if isinstance(want, str):
                    bound.setdefault(want, have)
    out: dict[str, tuple[int, ...]] = {}
    for s in specs:
        if s.dtype is None:
            raise DataError(
                f"input {s.name!r} has type {s.type_name}: synthetic data cannot be generated for it"
            )
        bax = s.batch_axis
        if s.name in shapes:
            dims = tuple(shapes[s.name])
            for axis, (want, have) in enumerate(zip(s.shape, dims, strict=False)):
                if axis != bax and isinstance(want, int) and want != have:
                    raise DataError(
                        f"--shape {s.name}: axis {axis} is fixed to {want} by the model, got {have}"
                    )
            out[s.name] = dims[:bax] + dims[bax + 1 :]
            continue
        dims_out, unresolved = [], []
        for axis, d in enumerate(s.shape):
            if axis == bax:
                continue
            if isinstance(d, int):
                dims_out.append(d)
            elif isinstance(d, str) and d in bound:
                dims_out.append(bound[d])
            else:
                unresolved.append(axis)
        if unresolved:
            example = "x".join(
                "1" if i == bax else (str(d) if isinstance(d, int) else "N") for i, d in enumerate(s.shape)
            )
            raise DataError(
                f"input {s.name!r} has symbolic dims {_fmt_shape(s.shape)}: give them with --shape "
                f"{s.name}={example} (numbers for N) or pass --data"
            )
        out[s.name] = tuple(dims_out)
    return out


DEFAULT_SYNTHETIC_SAMPLES = 64


def spread_samples(arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], samples: int) -> dict[str, np.ndarray]:
    """``samples`` evenly spaced samples of in-memory arrays keyed by input name (each sliced on its
    batch axis; constants, other keys and labels of the same length follow); unchanged when they
    hold no more than that."""
    axes = {s.name: s.batch_axis for s in specs}

    def axis(k: str, v: Any) -> int | None:
        nd = getattr(v, "ndim", 0)
        if nd == 0:
            return None
        ax = axes.get(k, 0)
        return ax if ax < nd else 0

    lengths = [v.shape[ax] for k, v in arrays.items() if (ax := axis(k, v)) is not None]
    n = max(lengths, default=0)
    if n <= samples:
        return dict(arrays)
    idx = np.linspace(0, n - 1, samples).round().astype(np.int64)
    out = {}
    for k, v in arrays.items():
        ax = axis(k, v)
        out[k] = np.take(v, idx, axis=ax) if ax is not None and v.shape[ax] == n else v
    return out


def open_data(
    data: str | os.PathLike[str] | Mapping[str, np.ndarray] | DataSource | None,
    specs: Sequence[TensorSpec],
    *,
    labels_key: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    int_range: Mapping[str, tuple[int, int]] | tuple[int, int] | None = None,
    samples: int | None = None,
    seed: int = 0,
) -> DataSource:
    """Open the right source for ``data``: None (synthetic), a path (file or folder), arrays, a source."""
    if isinstance(data, DataSource):
        return data
    if data is None:
        return SyntheticSource(
            specs, samples=samples or DEFAULT_SYNTHETIC_SAMPLES, shapes=shapes, int_range=int_range, seed=seed
        )
    if isinstance(data, Mapping):
        return ArraySource(data, specs, labels_key=labels_key)
    from onnxcompress.model_io import check_data_path

    path = check_data_path(data)  # missing, or not an .npz/.npy: one message everywhere
    if path.is_dir():
        return DirectorySource(path, specs, labels_key=labels_key)
    if path.suffix.lower() == ".npy":
        if len(specs) != 1:
            raise DataError(
                f"{path}: a .npy file only suits a one-input model; use an .npz keyed by input name"
            )
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path} as .npy: {exc}") from None
        return ArraySource({specs[0].name: arr}, specs, origin=str(path))
    return NpzSource(path, specs, labels_key=labels_key)
