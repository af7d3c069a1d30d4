"""The ``.onnxc`` container: Deep Compression's entropy-coding stage around a compressed ONNX model.

Index streams cannot be entropy-decoded inside an ONNX graph, so this stage lives outside it: the
container holds the compressed model with its code/gap/mask streams entropy coded (ANS, Huffman or
raw, whichever is smallest per stream) and the rest compressed with zstd (lzma without
``zstandard``). :func:`read_model` expands it to the exact bytes that were packed.

Public API: :func:`write_container`, :func:`read_model`, :func:`read_model_bytes`,
:func:`unpack_to_file`, :func:`staircase`, :class:`ContainerStats`. Format: ``docs/format.md`` Part 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from onnxcompress.container.format import FORMAT_VERSION, MAGIC, MAX_MODEL_BYTES, looks_like_container
from onnxcompress.container.pack import (
    ContainerStats,
    Step,
    StreamStats,
    expand,
    format_report,
    model_bytes_of,
    pack_bytes,
    staircase,
)
from onnxcompress.errors import ContainerError, InvalidModelError

if TYPE_CHECKING:
    import onnx

#: A container never exceeds its model (stored streams are the fallback) plus record overheads.
MAX_CONTAINER_BYTES = 2 * MAX_MODEL_BYTES

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ContainerStats",
    "Step",
    "StreamStats",
    "format_report",
    "is_container_file",
    "read_model",
    "read_model_bytes",
    "staircase",
    "unpack_to_file",
    "write_atomic",
    "write_container",
]


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and move it into place (never partial)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_container(
    model: onnx.ModelProto | str | os.PathLike[str] | bytes,
    path: str | os.PathLike[str],
    *,
    coder: str = "auto",
    verify: bool = True,
) -> ContainerStats:
    """Pack ``model`` (a compressed model: proto, path or serialized bytes) into ``path``.

    ``coder`` is ``auto`` (smallest per stream), ``ans``, ``huffman`` or ``raw`` for the symbol
    streams. With ``verify`` (default) the container is expanded once in memory and compared with
    the model before anything is written. The file is written atomically and replaces ``path``;
    refusing to overwrite is the caller's (CLI's) policy, except that the input is never replaced.
    """
    if isinstance(model, (str, os.PathLike)) and Path(model).exists() and Path(path).exists():
        if Path(model).resolve() == Path(path).resolve():
            raise ContainerError(f"{path}: the output is the input; choose another output path")
    data = model_bytes_of(model)
    blob, stats = pack_bytes(data, coder=coder, verify=verify)
    write_atomic(path, blob)
    stats.path = str(path)
    return stats


def read_model_bytes(
    path_or_bytes: str | os.PathLike[str] | bytes, *, max_model_bytes: int = MAX_MODEL_BYTES
) -> bytes:
    """The exact serialized ONNX model a container holds (every checksum verified)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        blob = bytes(path_or_bytes)
    else:
        p = Path(path_or_bytes)
        if not p.is_file():
            raise ContainerError(f"{p}: no such container file")
        if p.stat().st_size > MAX_CONTAINER_BYTES:
            raise ContainerError(f"{p}: {p.stat().st_size} bytes is larger than any valid container")
        blob = p.read_bytes()
    return expand(blob, max_model_bytes=max_model_bytes)


def read_model(path_or_bytes: str | os.PathLike[str] | bytes) -> onnx.ModelProto:
    """Expand a container into the ``onnx.ModelProto`` it holds (the exact compressed model)."""
    import onnx

    data = read_model_bytes(path_or_bytes)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # the digest matched, so the packer was given something that is not ONNX
        raise InvalidModelError("the container holds bytes that are not an ONNX model") from None
    return model


def unpack_to_file(container: str | os.PathLike[str] | bytes, out_path: str | os.PathLike[str]) -> int:
    """Write the model a container holds to ``out_path`` (atomically); returns its byte count.

    The output is byte-identical to the ``.onnx`` file that was packed (for a model with external
    data: to that model re-serialized with its data inline, as one file).
    """
    if isinstance(container, (str, os.PathLike)) and Path(out_path).exists():
        if Path(container).resolve() == Path(out_path).resolve():
            raise ContainerError(f"{out_path}: the output is the input; choose another output path")
    data = read_model_bytes(container)
    write_atomic(out_path, data)
    return len(data)


def is_container_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the ``.onnxc`` magic bytes."""
    try:
        with open(path, "rb") as f:
            return looks_like_container(f.read(len(MAGIC)))
    except OSError:
        return False
