"""onnxcompress.load: .onnx and .onnxc alike, and the decoded cache that skips the decode on
later loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

import onnxcompress as oc
from onnxcompress.container import write_container

LENET = Path(__file__).resolve().parent.parent / "models" / "lenet_300_100.onnx"
X = {"input": np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)}


def _compressed(tmp_path: Path) -> Path:
    out = tmp_path / "c.onnx"
    oc.compress(LENET, out, oc.preset("small"))
    return out


def test_load_onnx_and_container_agree(tmp_path):
    model = _compressed(tmp_path)
    container = tmp_path / "c.onnxc"
    write_container(onnx.load(model), container)
    a = oc.load(model).run(None, X)[0]
    b = oc.load(container).run(None, X)[0]
    np.testing.assert_array_equal(a, b)
    assert oc.load_model(container).SerializeToString() == model.read_bytes()


def test_decoded_cache_is_built_once_and_has_no_decode_left(tmp_path):
    model = _compressed(tmp_path)
    cache = tmp_path / "cache"
    ref = oc.load(model).run(None, X)[0]
    first = oc.load(model, cache_dir=cache).run(None, X)[0]
    files = sorted(p.name for p in cache.iterdir())
    assert files and all(".decoded.onnx" in f for f in files)
    decoded = onnx.load(str(cache / files[0]))
    assert not decoded.functions and not any(n.domain == "ai.onnxcompress" for n in decoded.graph.node)
    stamp = (cache / files[0]).stat().st_mtime_ns
    second = oc.load(model, cache_dir=cache).run(None, X)[0]
    assert (cache / files[0]).stat().st_mtime_ns == stamp, "the cache was rebuilt"
    np.testing.assert_array_equal(first, ref)
    np.testing.assert_array_equal(second, ref)


def test_decoded_cache_of_a_container(tmp_path):
    container = tmp_path / "c.onnxc"
    write_container(onnx.load(_compressed(tmp_path)), container)
    out = oc.load(container, cache_dir=tmp_path / "cache").run(None, X)[0]
    np.testing.assert_array_equal(out, oc.load(container).run(None, X)[0])


def test_host_and_onnxruntime_decode_agree_for_onnx_and_container(tmp_path):
    """load()'s default numpy decode gives the exact outputs of onnxruntime's own folding."""
    model = _compressed(tmp_path)
    container = tmp_path / "c.onnxc"
    write_container(onnx.load(model), container)
    ref = oc.load(model, decode="onnxruntime").run(None, X)[0]
    for path in (model, container):
        session = oc.load(path)  # decode="host"
        np.testing.assert_array_equal(session.run(None, X)[0], ref)
        assert session._onnxcompress_external_initializers  # decoded weights came from numpy


def test_uncompressed_model_is_loaded_from_its_path(tmp_path, monkeypatch):
    import onnxcompress.passes.host_decode as hd

    monkeypatch.setattr(hd, "decode_on_host", lambda m: (_ for _ in ()).throw(AssertionError("decoded")))
    out = oc.load(LENET).run(None, X)[0]
    assert out.shape == (4, 10)


def test_bad_decode_mode():
    import pytest

    from onnxcompress.errors import ConfigError

    with pytest.raises(ConfigError, match="decode mode"):
        oc.load(LENET, decode="gpu")


def test_reference_lookups_are_exact_across_chunks(tmp_path, monkeypatch):
    """The chunked numpy lookups (bounded temporaries) give the same weights at any chunk size."""
    from onnxcompress.ops import numeric as reference
    from onnxcompress.passes.host_decode import decode_on_host

    for preset in ("small", "safe", "deep-compression"):
        path = tmp_path / f"{preset}.onnx"
        oc.compress(LENET, path, oc.preset(preset))
        want = decode_on_host(onnx.load(path)).arrays
        monkeypatch.setattr(reference, "CHUNK", 7)
        got = decode_on_host(onnx.load(path)).arrays
        monkeypatch.setattr(reference, "CHUNK", 1 << 20)
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
