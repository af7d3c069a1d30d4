"""Turn a compressed model back into a plain fp32 (dense) ONNX model.

Why: a runtime that is not Python (C++, C#, Java, mobile) cannot use :func:`onnxcompress.load`'s
numpy decode, and a stock session rebuilds the weights by constant folding, which costs many times
the original's load time and memory on large models. Decoding once, at install time, gives such
users the original graph with the compressed weights in place: a model any runtime loads like the
original, and whose outputs equal the compressed model's bit for bit (the weights are the very
arrays the host decode hands onnxruntime, and those equal what onnxruntime's folding computes).

The weights are rebuilt by :func:`onnxcompress.passes.host_decode.decode_on_host` (the numpy path
of ``onnxcompress.load``); this module only turns its placeholder initializers into real ones and
drops what is left of the ``ai.onnxcompress`` domain. Files go through
:mod:`onnxcompress.model_io` (external data above 2 GB, atomic writes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from onnxcompress.errors import InvalidModelError

if TYPE_CHECKING:
    import onnx


@dataclass
class DenseModel:
    """A decoded model and what was done to it."""

    model: onnx.ModelProto
    weights: int = 0  # weights rebuilt from compressed streams
    decode_nodes: int = 0  # ai.onnxcompress nodes run in numpy
    files: list[Path] = field(default_factory=list)  # written by decode_file
    bytes_before: int | None = None
    bytes_after: int | None = None


def decode_model(model: onnx.ModelProto, *, label: str = "the model") -> DenseModel:
    """Rebuild every compressed weight of ``model`` (edited in place) as a plain initializer.

    ``model`` must hold its external data in memory (:func:`onnxcompress.model_io.open_model`
    does that). A model without decode nodes is returned unchanged (``weights == 0``). A decode
    node whose inputs are not constants cannot be decoded ahead of time: an error names it.
    """
    from onnx import numpy_helper

    from onnxcompress.inventory import iter_graphs
    from onnxcompress.ops import DOMAIN
    from onnxcompress.passes.host_decode import PLACEHOLDER_LOCATION, decode_on_host

    decoded = decode_on_host(model)
    left = [n.name or n.op_type for _, g in iter_graphs(model.graph) for n in g.node if n.domain == DOMAIN]
    if left:
        raise InvalidModelError(
            f"{label}: {len(left)} decode node(s) have inputs that are not stored constants "
            f"({', '.join(left[:3])}); the model was edited after compression and cannot be decoded ahead of time"
        )
    weights = 0
    for t in model.graph.initializer:
        if t.data_location == t.EXTERNAL and any(
            e.key == "location" and e.value == PLACEHOLDER_LOCATION for e in t.external_data
        ):
            # popped one by one: each decoded array is held once, as an array or as a tensor
            t.CopyFrom(numpy_helper.from_array(decoded.arrays.pop(t.name), t.name))
            weights += 1
    keep = [imp for imp in model.opset_import if imp.domain != DOMAIN]
    if len(keep) != len(model.opset_import) and not any(f.domain == DOMAIN for f in model.functions):
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return DenseModel(model=model, weights=weights, decode_nodes=decoded.decoded_nodes)


def decode_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    external_data: bool | None = None,
) -> DenseModel:
    """Write the dense form of ``src`` (an ``.onnx`` or ``.onnxc``) to ``dst``.

    ``external_data``: None writes the weights to ``<dst>.data`` only when the model would not fit
    in one protobuf (2 GB); True always, False never (refused above the limit by protobuf).
    """
    from onnxcompress import model_io

    out = model_io.check_output(dst, inputs=[src], overwrite=overwrite)
    model = model_io.open_model(src)
    result = decode_model(model, label=str(src))
    if external_data is None:
        external_data = model.ByteSize() > model_io.PROTOBUF_LIMIT
    result.files = model_io.save(model, out, external_data=external_data)
    _check(str(out) if external_data else model, out)
    result.bytes_before = model_io.size_on_disk(src)
    result.bytes_after = model_io.size_on_disk(out)
    return result


def _check(target: onnx.ModelProto | str, out: Path) -> None:
    """onnx.checker on the result (from the saved file above 2 GB, the only way it handles those)."""
    import onnx

    try:
        onnx.checker.check_model(target)
    except onnx.checker.ValidationError as exc:
        _remove(out)
        first = str(exc).splitlines()[0]
        raise InvalidModelError(f"{out}: the decoded model fails onnx.checker: {first}") from None


def _remove(out: Path) -> None:
    out.unlink(missing_ok=True)
    Path(str(out) + ".data").unlink(missing_ok=True)
