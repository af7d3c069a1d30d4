"""The ``.onnxc`` container: Deep Compression's entropy-coding stage around a compressed ONNX model.

Index streams cannot be entropy-decoded inside an ONNX graph, so this stage lives outside it: the
container holds the compressed model with its code/gap/mask streams entropy coded (ANS, Huffman or
raw, whichever is smallest per stream) and the rest compressed with zstd (lzma without
``zstandard``). :func:`read_model` expands it to the exact bytes that were packed.

Public API: :func:`write_container`, :func:`read_model`, :func:`read_model_bytes`,
:func:`unpack_to_file`, :func:`staircase`, :class:`ContainerStats`. Format: ``docs/format.md`` Part 2.
Files are read and written through :mod:`onnxcompress.model_io` (which also tells a container
from a plain model, by its magic bytes).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from onnxcompress.container.format import FORMAT_VERSION, MAGIC, MAX_MODEL_BYTES
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
from onnxcompress.errors import ContainerError

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
    "read_model",
    "read_model_bytes",
    "staircase",
    "unpack_to_file",
    "write_container",
]


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def write_container(
    model: onnx.ModelProto | str | os.PathLike[str] | bytes,
    path: str | os.PathLike[str],
    *,
    coder: str = "auto",
    verify: bool = True,
    original_bytes: int | None = None,
) -> ContainerStats:
    """Pack ``model`` (a compressed model: proto, path or serialized bytes) into ``path``.

    ``coder`` is ``auto`` (smallest per stream), ``ans``, ``huffman`` or ``raw`` for the symbol
    streams. With ``verify`` (default) the container is expanded once in memory and compared with
    the model before anything is written. The file is written atomically and replaces ``path``;
    refusing to overwrite is the caller's (CLI's) policy, except that the input is never replaced.
    ``original_bytes``: the real size on disk of the uncompressed model when known (``compress``);
    the staircase then starts from it instead of its estimate, so every ratio shown agrees.
    """
    from onnxcompress.model_io import write_bytes

    if isinstance(model, (str, os.PathLike)) and _same_file(model, path):
        raise ContainerError(f"{path}: the output is the input; choose another output path")
    data = model_bytes_of(model)
    blob, stats = pack_bytes(data, coder=coder, verify=verify)
    write_bytes(path, blob)
    stats.path = str(path)
    if original_bytes is not None and stats.steps:
        # the first two steps (original, pruned) are estimates from the compressed model: move
        # both by the same amount, so that an unpruned model's "pruned" equals its original
        delta = original_bytes - stats.steps[0].bytes
        sizes = [s.bytes + delta if i < 2 else s.bytes for i, s in enumerate(stats.steps)]
        stats.steps = [
            Step(s.name, n, original_bytes / max(1, n)) for s, n in zip(stats.steps, sizes, strict=True)
        ]
    return stats


def read_model_bytes(
    path_or_bytes: str | os.PathLike[str] | bytes, *, max_model_bytes: int = MAX_MODEL_BYTES
) -> bytes:
    """The exact serialized ONNX model a container holds (every checksum verified)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        blob = bytes(path_or_bytes)
    else:
        from onnxcompress.model_io import check_input, is_container

        p = check_input(path_or_bytes)
        if not is_container(p):
            raise ContainerError(
                f"{p}: not an .onnxc container (no container header); open it as an .onnx model"
            )
        if p.stat().st_size > MAX_CONTAINER_BYTES:
            raise ContainerError(f"{p}: {p.stat().st_size} bytes is larger than any valid container")
        blob = p.read_bytes()
        try:
            return expand(blob, max_model_bytes=max_model_bytes)
        except ContainerError as exc:  # name the file: the user may have passed several
            raise ContainerError(f"{p}: {exc}") from None
    return expand(blob, max_model_bytes=max_model_bytes)


def read_model(path_or_bytes: str | os.PathLike[str] | bytes) -> onnx.ModelProto:
    """Expand a container into the ``onnx.ModelProto`` it holds (the exact compressed model)."""
    from onnxcompress.model_io import parse_model

    data = read_model_bytes(path_or_bytes)
    label = "the container" if isinstance(path_or_bytes, (bytes, bytearray, memoryview)) else path_or_bytes
    return parse_model(data, label)  # the digest matched: junk here means junk was packed


def unpack_to_file(container: str | os.PathLike[str] | bytes, out_path: str | os.PathLike[str]) -> int:
    """Write the model a container holds to ``out_path`` (atomically); returns its byte count.

    The output is byte-identical to the ``.onnx`` file that was packed (for a model with external
    data: to that model re-serialized with its data inline, as one file).
    """
    from onnxcompress.model_io import write_bytes

    if isinstance(container, (str, os.PathLike)) and _same_file(container, out_path):
        raise ContainerError(f"{out_path}: the output is the input; choose another output path")
    data = read_model_bytes(container)
    write_bytes(out_path, data)
    return len(data)
