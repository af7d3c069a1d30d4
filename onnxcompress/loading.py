"""``onnxcompress.load`` / ``load_model``: open a compressed model whether ``.onnx`` or ``.onnxc``.

Sessions are built only through :func:`onnxcompress.sessions.make_session` (one place configures
constant folding limits, providers and external-data folders); it expands containers itself.
Imports are lazy so that importing onnxcompress stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort


def _is_container(path: str | os.PathLike[str]) -> bool:
    from onnxcompress.container import is_container_file

    return str(path).lower().endswith(".onnxc") or is_container_file(path)


def load(path: str | os.PathLike[str], providers: Any = None, **session_options: Any) -> ort.InferenceSession:
    """An ``InferenceSession`` for a ``.onnx`` model or an ``.onnxc`` container.

    Extra keyword arguments go to ``make_session`` (``threads``, ``optimization_level``...).
    """
    from onnxcompress.sessions import make_session

    if _is_container(path) and not str(path).lower().endswith(".onnxc"):
        model: Any = load_model(path)  # a container under another extension: expand it here
        return make_session(
            model,
            providers=providers,
            external_data_dir=os.path.dirname(os.path.abspath(path)),
            **session_options,
        )
    return make_session(path, providers=providers, **session_options)


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The ``onnx.ModelProto`` of a ``.onnx`` model (external data loaded) or an ``.onnxc`` container."""
    if _is_container(path):
        from onnxcompress.container import read_model

        return read_model(path)
    from onnxcompress.model_io import load_model as _load

    return _load(path)
