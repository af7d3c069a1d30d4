"""The .onnxc container: byte-identical round trips, and corrupt or crafted containers that must
fail with one ContainerError quickly (never hang, never allocate without bound)."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxcompress.container import format as fmt
from onnxcompress.container import read_model, read_model_bytes, staircase, unpack_to_file, write_container
from onnxcompress.container.pack import expand, pack_bytes, runs_decode, runs_encode
from onnxcompress.entropy import raw
from onnxcompress.errors import ContainerError, OnnxCompressError

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet_300_100.onnx"


def _stream(codes: np.ndarray, bits: int) -> np.ndarray:
    return np.frombuffer(raw.pack_bits(codes, bits), dtype=np.uint8)


def hand_model(
    seed: int = 0, size: int = 40_000, density: float = 0.1, bits: int = 5, gap_bits: int = 4
) -> bytes:
    """A model holding every decode operator of docs/format.md Part 1, built by hand."""
    rng = np.random.default_rng(seed)
    keep = np.flatnonzero(rng.random(size) < density)
    # Relative index (Part 1): a filler is the all-ones gap F, advances F positions, has no code.
    full = (1 << gap_bits) - 1
    gaps, codes, prev = [], [], -1
    for p in keep:
        g = p - prev - 1
        while g >= full:
            gaps.append(full)
            g -= full
        gaps.append(g)
        codes.append(int(np.clip(round(rng.normal(1 << (bits - 1), 1 << (bits - 3))), 1, (1 << bits) - 1)))
        prev = p
    entries = len(gaps)
    mask = np.zeros(size, np.uint8)
    mask[keep] = 1
    codebook = np.concatenate([[0.0], np.sort(rng.standard_normal((1 << bits) - 1))]).astype(np.float32)[None]
    inits = [
        numpy_helper.from_array(_stream(np.array(codes), bits), "rel/codes"),
        numpy_helper.from_array(_stream(np.array(gaps), gap_bits), "rel/gaps"),
        numpy_helper.from_array(codebook, "rel/codebook"),
        numpy_helper.from_array(np.array([0, size], np.int32), "rel/segments"),
        numpy_helper.from_array(_stream(np.array(codes[: keep.size]), bits), "mask/codes"),
        numpy_helper.from_array(_stream(mask, 1), "mask/mask"),
        numpy_helper.from_array(_stream(np.minimum(rng.geometric(0.3, 3000) - 1, 15), 4), "dense/codes"),
        numpy_helper.from_array(rng.standard_normal((1, 16)).astype(np.float16), "dense/codebook"),
        numpy_helper.from_array(np.array([0, 3000], np.int32), "dense/segments"),
        numpy_helper.from_array(rng.standard_normal(keep.size).astype(np.float32), "sparse/values"),
        numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "plain/weight"),
    ]
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("CodebookRelative", ["rel/codes", "rel/gaps", "rel/codebook", "rel/segments"], ["w1"],
                         domain="ai.onnxcompress", bits=bits, gap_bits=gap_bits, entries=entries, kept=int(keep.size),
                         size=size, to=f),
        helper.make_node("CodebookMask", ["mask/codes", "mask/mask", "rel/codebook", "rel/segments"], ["w2"],
                         domain="ai.onnxcompress", bits=bits, entries=int(keep.size), size=size, to=f),
        helper.make_node("CodebookDense", ["dense/codes", "dense/codebook", "dense/segments"], ["w3"],
                         domain="ai.onnxcompress", bits=4, size=3000, to=f),
        helper.make_node("SparseMask", ["sparse/values", "mask/mask"], ["w4"],
                         domain="ai.onnxcompress", entries=int(keep.size), size=size, to=f),
    ]  # fmt: skip
    outs = [helper.make_tensor_value_info(n, f, None) for n in ("w1", "w2", "w3", "w4")]
    graph = helper.make_graph(nodes, "hand", [], outs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnxcompress", 1)]
    )
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def hand_bytes() -> bytes:
    return hand_model()


@pytest.fixture(scope="module")
def packed(hand_bytes: bytes) -> bytes:
    blob, _ = pack_bytes(hand_bytes)
    return blob


def test_round_trip_is_byte_identical(hand_bytes: bytes, packed: bytes, tmp_path: Path) -> None:
    assert expand(packed) == hand_bytes
    src = tmp_path / "m.onnx"
    src.write_bytes(hand_bytes)
    stats = write_container(src, tmp_path / "m.onnxc")
    assert stats.container_bytes < len(hand_bytes)  # random codes: little to gain
    assert unpack_to_file(tmp_path / "m.onnxc", tmp_path / "back.onnx") == len(hand_bytes)
    assert (tmp_path / "back.onnx").read_bytes() == hand_bytes
    assert read_model(tmp_path / "m.onnxc") == onnx.load_from_string(hand_bytes)
    roles = {s.name: (s.role, s.kind) for s in stats.streams}
    assert roles["rel/codes"] == ("codes", "codes") and roles["rel/gaps"][0] == "gaps"
    assert roles["mask/mask"][0] == "mask" and roles["plain/weight"][0] == "weight"


@pytest.mark.parametrize("coder", ["ans", "huffman", "raw"])
def test_every_coder_round_trips(hand_bytes: bytes, coder: str) -> None:
    from onnxcompress.entropy import available_coders

    if coder not in available_coders():
        pytest.skip(f"{coder} unavailable")
    blob, stats = pack_bytes(hand_bytes, coder=coder)
    assert expand(blob) == hand_bytes
    assert all(s.coder in (coder, "stored", "zstd", "lzma", "zlib") for s in stats.streams)


def test_nonzero_padding_and_odd_streams_still_exact() -> None:
    base = onnx.load_from_string(hand_model(1, size=1001))
    for t in base.graph.initializer:
        if t.name == "rel/codes":  # set padding bits: re-packing the declared codes would differ
            b = bytearray(t.raw_data)
            b[-1] |= 0x80
            t.raw_data = bytes(b)
        if t.name == "dense/codes":  # length no longer a whole number of 8-code groups
            t.raw_data = t.raw_data + b"\x01"
            t.dims[0] += 1
    data = base.SerializeToString()
    blob, _ = pack_bytes(data)
    assert expand(blob) == data


def test_model_without_streams_and_empty_tensor() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    w = numpy_helper.from_array(np.zeros(0, np.float32), "empty")
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[w])  # fmt: skip
    data = helper.make_model(g).SerializeToString()
    blob, _ = pack_bytes(data)
    assert expand(blob) == data


def test_runs_transform() -> None:
    rng = np.random.default_rng(5)
    for density in (0.0, 0.001, 0.1, 0.5, 1.0):
        data = np.packbits(rng.random(8 * 999) < density, bitorder="little").tobytes()
        assert runs_decode(runs_encode(data), len(data)) == data


def test_external_data_is_inlined(tmp_path: Path, hand_bytes: bytes) -> None:
    model = onnx.load_from_string(hand_bytes)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)  # fmt: skip
    stats = write_container(tmp_path / "ext.onnx", tmp_path / "ext.onnxc")
    back = read_model(tmp_path / "ext.onnxc")
    assert back == onnx.load_from_string(hand_bytes)  # same content, data inline (save mutated ``model``)
    assert stats.model_bytes == len(hand_bytes)


def test_staircase(hand_bytes: bytes, packed: bytes) -> None:
    steps = staircase(hand_bytes, container_bytes=len(packed))
    assert [s.name.split()[0] for s in steps] == ["original", "pruned", "pruned", "entropy"]
    assert steps[0].bytes > steps[1].bytes > steps[2].bytes > steps[3].bytes
    assert steps[2].bytes == len(hand_bytes)


# --------------------------------------------------------------------------- corruption


def _regions(blob: bytes) -> list[int]:
    """Cut points inside every region: header, remainder, each stream record and payload, trailer."""
    c = fmt.parse(blob)
    cuts = [0, 4, 8, 12, 20, 31, 32, 40, 60]
    pos = 32 + 24 + len(c.remainder)
    cuts += [32 + 24 + len(c.remainder) // 2, pos]
    for s in c.streams:
        rec_end = pos + 42 + len(s.name.encode())
        cuts += [pos + 10, rec_end, rec_end + len(s.payload) // 2]
        pos = rec_end + len(s.payload)
    cuts += [len(blob) - 20, len(blob) - 4, len(blob) - 1]
    return sorted(set(c for c in cuts if 0 <= c < len(blob)))


def test_truncated_everywhere(packed: bytes) -> None:
    t0 = time.perf_counter()
    for cut in _regions(packed):
        with pytest.raises(ContainerError):
            expand(packed[:cut])
    assert time.perf_counter() - t0 < 10


def test_bit_flips(packed: bytes) -> None:
    rng = np.random.default_rng(6)
    for pos in rng.integers(0, len(packed), 200):
        bad = bytearray(packed)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(ContainerError):
            expand(bytes(bad))


def test_wrong_version_and_magic(packed: bytes) -> None:
    bad = bytearray(packed)
    bad[8:10] = struct.pack("<H", 99)
    with pytest.raises(ContainerError, match="version 99"):
        expand(bytes(bad))
    with pytest.raises(ContainerError, match="magic"):
        expand(b"\x08\x07" + packed[2:])
    with pytest.raises(ContainerError):
        expand(b"")


def _recrafted(packed: bytes, edit) -> bytes:
    """Re-serialize a parsed container after ``edit``: all checksums valid, content crafted."""
    c = fmt.parse(packed)
    edit(c)
    return fmt.serialize(c)


def test_crafted_headers_fail_fast(packed: bytes) -> None:
    def huge_model(c: fmt.Container) -> None:
        c.model_size = 2**40

    def huge_count(c: fmt.Container) -> None:
        s = next(s for s in c.streams if s.kind == fmt.KIND_CODES)
        s.count = 2**40

    def huge_length(c: fmt.Container) -> None:
        c.streams[0].length = 2**31
        c.model_size += 2**31 - 1

    def overlap(c: fmt.Container) -> None:
        c.streams[1].offset = c.streams[0].offset

    def swap_coder(c: fmt.Container) -> None:
        s = next(s for s in c.streams if s.coder == fmt.CODER_ANS)
        s.coder = fmt.CODER_HUFFMAN

    def wrong_remainder(c: fmt.Container) -> None:
        c.remainder_raw_len += 5
        c.model_size += 5

    def ans_count(c: fmt.Container) -> None:  # an ANS payload asked for far more symbols than it holds
        s = next(s for s in c.streams if s.coder == fmt.CODER_ANS)
        s.kind, s.bits, s.alphabet, s.count = fmt.KIND_RUNS, 1, 256, s.length * 8 + 1

    def digest(c: fmt.Container) -> None:
        c.model_digest = b"\x01" * 16

    def payload_swap(c: fmt.Container) -> None:
        a, b = c.streams[0], c.streams[-1]
        a.payload, b.payload = b.payload, a.payload

    for edit in (huge_model, huge_count, huge_length, overlap, swap_coder, wrong_remainder, ans_count, digest,
                 payload_swap):  # fmt: skip
        t0 = time.perf_counter()
        with pytest.raises(ContainerError):
            expand(_recrafted(packed, edit))
        assert time.perf_counter() - t0 < 5, edit.__name__


def test_crafted_zip_bomb_remainder_refused() -> None:
    """A tiny file declaring a big model: decompression stops at the declared size, then fails."""
    bomb = zlib.compress(b"\0" * (1 << 24), 9)
    c = fmt.Container(1 << 20, fmt.CODEC_ZLIB, 1 << 20, bomb, [], b"\0" * 16)
    with pytest.raises(ContainerError):
        expand(fmt.serialize(c))


def test_errors_are_onnxcompress_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.onnxc").write_bytes(b"not a container at all")
    with pytest.raises(OnnxCompressError):
        read_model(tmp_path / "junk.onnxc")
    with pytest.raises(OnnxCompressError, match="no such file"):
        read_model_bytes(tmp_path / "missing.onnxc")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutations_never_load(packed: bytes, hand_bytes: bytes, data: st.DataObject) -> None:
    blob = bytearray(packed)
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "insert"]))
        if not blob:
            break
        pos = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set":
            blob[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del blob[pos:]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        out = expand(bytes(blob))
    except ContainerError:
        return
    assert out == hand_bytes  # only a no-op mutation may load


# --------------------------------------------------------------------------- real models


@pytest.mark.skipif(not LENET.exists(), reason="models/lenet_300_100.onnx not present")
def test_compressed_lenet_loads_through_container(tmp_path: Path) -> None:
    from onnxcompress import load, load_model
    from onnxcompress.compressor import compress_model
    from onnxcompress.config import from_dict

    cfg = from_dict({"weight": {"sparsity": 0.9, "bits": 5}})
    model = compress_model(onnx.load(LENET), cfg).model
    onnx_path = tmp_path / "lenet.onnx"
    onnx.save(model, onnx_path)
    stats = write_container(onnx_path, tmp_path / "lenet.onnxc")
    assert stats.container_bytes < onnx_path.stat().st_size
    assert load_model(tmp_path / "lenet.onnxc") == onnx.load(onnx_path)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    a = load(tmp_path / "lenet.onnxc")
    b = load(onnx_path)
    name = a.get_inputs()[0].name
    np.testing.assert_array_equal(a.run(None, {name: x})[0], b.run(None, {name: x})[0])


def test_cli_pack_unpack(tmp_path: Path, hand_bytes: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxcompress.cli import main

    src = tmp_path / "m.onnx"
    src.write_bytes(hand_bytes)
    assert main(["pack", str(src), "-o", str(tmp_path / "m.onnxc"), "--coder", "huffman"]) == 0
    assert "entropy coded" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "m.onnxc"), "-o", str(tmp_path / "back.onnx")]) == 0
    assert (tmp_path / "back.onnx").read_bytes() == hand_bytes
    # Refusals: existing output, output == input; a corrupt container leaves no output behind.
    assert main(["unpack", str(tmp_path / "m.onnxc"), "-o", str(tmp_path / "back.onnx")]) != 0
    assert main(["pack", str(src), "-o", str(src), "--overwrite"]) != 0
    assert src.read_bytes() == hand_bytes
    (tmp_path / "bad.onnxc").write_bytes((tmp_path / "m.onnxc").read_bytes()[:-10])
    assert main(["unpack", str(tmp_path / "bad.onnxc"), "-o", str(tmp_path / "bad.onnx")]) != 0
    assert not (tmp_path / "bad.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_stream_memo_gives_the_same_containers_and_reuses_streams() -> None:
    # the search packs many variants of one model: with a shared memo, tensors seen before are not
    # coded again, and every container is the one pack_bytes writes without it
    variants = [hand_model(seed=0), hand_model(seed=0, bits=4), hand_model(seed=1), hand_model(seed=0)]
    memo: dict = {}
    sizes = []
    for data in variants:
        with_memo, _ = pack_bytes(data, verify=False, memo=memo)
        assert with_memo == pack_bytes(data, verify=False)[0]
        assert expand(with_memo) == data
        sizes.append(len(memo))
    assert sizes[3] == sizes[2]  # the last model repeats the first: every stream came from the memo
    assert sizes[1] < 2 * sizes[0]  # a 4-bit variant shares its float streams with the 5-bit one
