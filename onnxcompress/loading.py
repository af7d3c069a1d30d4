"""``onnxcompress.load``: a session for a compressed model, whether ``.onnx`` or ``.onnxc``.

Files are opened only through :mod:`onnxcompress.model_io` (``onnxcompress.load_model`` is
:func:`onnxcompress.model_io.open_model`), sessions are built only through
:func:`onnxcompress.sessions.make_session` (one place configures constant folding limits,
providers and external-data folders; it expands containers itself). Imports are lazy so that
importing onnxcompress stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort


DECODE_MODES = ("host", "onnxruntime")


def check_decode_mode(decode: str) -> None:
    """Refuse an unknown ``decode`` (for load, bench and verify alike)."""
    if decode not in DECODE_MODES:
        from onnxcompress.errors import ConfigError

        raise ConfigError(f"unknown decode mode {decode!r}: use one of {', '.join(DECODE_MODES)}")


def load(
    path: str | os.PathLike[str],
    providers: Any = None,
    *,
    decode: str = "host",
    cache_dir: str | os.PathLike[str] | None = None,
    **session_options: Any,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for a ``.onnx`` model or an ``.onnxc`` container.

    ``decode="host"`` (default) rebuilds the compressed weights with numpy before onnxruntime sees
    the model (:mod:`onnxcompress.passes.host_decode`): the same weights bit for bit, in a fraction
    of the time and memory onnxruntime's constant folding needs. ``decode="onnxruntime"`` loads
    the model as a stock ``InferenceSession`` would. A model without decode nodes is handed to
    onnxruntime as a path either way.

    ``cache_dir`` keeps a *decoded cache*: the first load decodes the weights (in numpy) and saves
    onnxruntime's optimized model there; later loads of the same
    file with the same onnxruntime read that instead and skip the decode entirely. Extra keyword
    arguments go to ``make_session`` (``threads``, ``optimization_level``...).
    """
    from onnxcompress.sessions import make_session

    check_decode_mode(decode)
    if cache_dir is not None:
        cached = decoded_cache(path, cache_dir)
        return make_session(cached, providers=providers, **session_options)
    if decode == "host":
        model = _compressed_model(path)
        if model is not None:
            folder = os.path.dirname(os.path.abspath(path))
            return host_session(model, providers=providers, external_data_dir=folder, **session_options)
    return make_session(path, providers=providers, **session_options)


def host_session(
    model: onnx.ModelProto, providers: Any = None, **session_options: Any
) -> ort.InferenceSession:
    """A session for ``model`` (edited in place) whose weights were rebuilt in numpy first."""
    from onnxcompress.passes.host_decode import decode_on_host
    from onnxcompress.sessions import make_session

    decoded = decode_on_host(model)
    return make_session(
        decoded.model, providers=providers, external_initializers=decoded.arrays, **session_options
    )


def _compressed_model(path: str | os.PathLike[str]) -> onnx.ModelProto | None:
    """The ModelProto of ``path`` with its data when it holds decode nodes, else None (the caller
    hands the path to onnxruntime). The file is parsed once; external data is read only if needed.
    A container is always returned: it is expanded already, onnxruntime cannot read it."""
    from onnxcompress.model_io import is_container, load_external_data, open_model
    from onnxcompress.passes.host_decode import has_decode_nodes

    model = open_model(path, load_external=False)
    if is_container(path):
        return model
    if not has_decode_nodes(model):
        return None
    load_external_data(model, path)
    return model


def decoded_cache(path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> str:
    """Path of the decoded (constant-folded) form of ``path`` in ``cache_dir``, built if missing.

    The key is the file's content hash and the onnxruntime version, so an edited model or an
    upgraded runtime never reads a stale cache. The weights are decoded on the host (as ``load``
    does; onnxruntime writes them out with the rest). The optimized model is saved at BASIC level
    (constant folding only: portable across machines, unlike fused kernels) with its weights in
    a ``.data`` file beside it, written into a temporary folder and moved into place atomically.
    """
    import hashlib
    from pathlib import Path

    import onnxruntime

    from onnxcompress.model_io import atomic_files, check_input
    from onnxcompress.passes.host_decode import decode_on_host
    from onnxcompress.sessions import make_session

    src = check_input(path)
    digest = hashlib.sha256()
    with open(src, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(onnxruntime.__version__.encode())
    key = digest.hexdigest()[:24]
    cache = Path(cache_dir)
    target = cache / f"{src.stem}.{key}.decoded.onnx"
    if target.exists():
        return str(target)
    data_name = target.name + ".data"
    source: Any = src
    arrays = None
    model = _compressed_model(src)
    if model is not None:
        decoded = decode_on_host(model)  # numpy decode: far less time and memory
        source, arrays = decoded.model, decoded.arrays
    with atomic_files(cache / data_name, target) as (_, tmp_model):
        make_session(
            source,
            external_data_dir=src.parent,
            external_initializers=arrays,
            optimization_level="basic",
            optimized_model_path=tmp_model,
            config={
                "session.optimized_model_external_initializers_file_name": data_name,
                "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
            },
        )
    return str(target)
