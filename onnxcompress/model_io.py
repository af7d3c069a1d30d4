"""Load and save ONNX models safely.

Loading validates what a user can get wrong (not ONNX, truncated, missing or escaping external
data) and turns it into one clear :class:`InvalidModelError`. Saving is atomic: everything is
written into a temporary folder beside the destination and moved into place only when complete,
so a failure never leaves a partial output, and a stale ``.data`` file is replaced, never appended
to (``onnx.save`` appends to an existing external-data file).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from onnxcompress.errors import InvalidModelError, OutputExistsError, UnsafeExternalDataError

# protobuf refuses to serialize messages of 2 GiB or more; stay clear of it.
PROTOBUF_LIMIT = 2**31 - 2**24
EXTERNAL_THRESHOLD = 1024  # tensors above this many bytes go to the .data file when external


def _iter_all_tensors(model: onnx.ModelProto):
    yield from onnx.external_data_helper._get_all_tensors(model)


def load_model(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Read and sanity-check an ONNX model, with its external data when it has some.

    ``load_external=False`` leaves external tensors as references to their (checked) files:
    :func:`~onnxcompress.compressor.compress_file` then reads each weight only while compressing it.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file")
    if not path.is_file():
        raise InvalidModelError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise InvalidModelError(f"{path}: the file is empty, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        raise InvalidModelError(
            f"{path}: not an ONNX model (the protobuf does not parse; the file may be truncated or of another format)"
        ) from None
    del data  # the parsed model holds its own copy: release the file's bytes before the external data
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise InvalidModelError(f"{path}: not an ONNX model (no graph found; truncated or another format)")
    if not model.opset_import:
        raise InvalidModelError(
            f"{path}: the model declares no opset import; re-export it with a current exporter"
        )
    check_external_data(model, path.parent)
    if load_external:
        load_external_data(model, path)
    return model


def load_external_data(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Read the external data of ``model``, loaded from ``path`` with ``load_external=False``
    (which already checked the locations), into the ModelProto."""
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(Path(path).parent))
    except Exception as exc:  # the locations were checked at load, so this is an I/O problem
        raise InvalidModelError(f"{path}: cannot read external data: {exc}") from None


def check_external_data(model: onnx.ModelProto, base_dir: str | os.PathLike[str]) -> None:
    """Refuse external-data locations outside the model's folder and missing or short files."""
    base = Path(base_dir).resolve()
    for tensor in _iter_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = info.location or ""
        if not location or os.path.isabs(location) or Path(location).drive:
            raise UnsafeExternalDataError(
                f"tensor {tensor.name!r}: external data location {location!r} must be a relative path inside the model's folder"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise UnsafeExternalDataError(
                f"tensor {tensor.name!r}: external data location {location!r} points outside the model's folder; "
                "move the data file next to the model"
            )
        if not target.is_file():
            raise InvalidModelError(
                f"tensor {tensor.name!r}: external data file {location!r} is missing; keep it next to the model"
            )
        size = target.stat().st_size
        offset = info.offset or 0
        length = info.length if info.length is not None else size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidModelError(
                f"tensor {tensor.name!r}: external data {location!r} is truncated "
                f"(needs bytes {offset}..{offset + length}, file has {size})"
            )


def model_file_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a model, its external data files included."""
    path = Path(path)
    total = path.stat().st_size
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen: set[str] = set()
    for tensor in _iter_all_tensors(model):
        if uses_external_data(tensor):
            loc = ExternalDataInfo(tensor).location
            if loc and loc not in seen:
                seen.add(loc)
                f = path.parent / loc
                if f.is_file():
                    total += f.stat().st_size
    return total


def check_output_path(
    inp: str | os.PathLike[str] | None, out: str | os.PathLike[str], *, overwrite: bool
) -> None:
    """Never overwrite the input, nor an existing file unless asked."""
    out_p = Path(out)
    if inp is not None and out_p.exists() and Path(inp).exists() and out_p.resolve() == Path(inp).resolve():
        raise OutputExistsError(f"{out}: the output is the input; choose another output path")
    if out_p.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    if out_p.exists() and out_p.is_dir():
        raise OutputExistsError(f"{out}: is a folder; give a file path")
    if not out_p.parent.exists():
        raise OutputExistsError(f"{out}: folder {out_p.parent} does not exist")


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
) -> list[Path]:
    """Write ``model`` atomically; returns the files written.

    ``external_data=None`` decides automatically: external data only when the model would not fit
    in one protobuf. The data file is ``<name>.data`` beside the model.
    """
    path = Path(path)
    if external_data is None:
        external_data = model.ByteSize() > PROTOBUF_LIMIT
    data_name = path.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(prefix=".onnxcompress-", dir=path.parent))
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            onnx.save_model(
                model,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=EXTERNAL_THRESHOLD,
            )
            # save_model converts the tensors in place; bring the data back so the caller's
            # ModelProto stays self-contained.
            onnx.external_data_helper.load_external_data_for_model(model, str(tmpdir))
        else:
            with open(tmp_model, "wb") as fh:
                fh.write(model.SerializeToString())
        written = [path]
        if external_data:
            os.replace(tmpdir / data_name, path.parent / data_name)
            written.append(path.parent / data_name)
        elif (path.parent / data_name).exists():
            # a stale data file from an earlier run would be confusing; it belongs to this output
            (path.parent / data_name).unlink()
        os.replace(tmp_model, path)
        return written
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
