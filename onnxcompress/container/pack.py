"""Packing and expanding ``.onnxc`` containers (the entropy-coding stage of Deep Compression).

Byte-exact by construction: we never re-serialize the model. Packing walks the protobuf wire format
of the serialized model to find the exact byte range of each payload tensor's ``raw_data``, cuts
those ranges out, codes each one as a stream, and compresses what is left (graph, small tensors)
with a general-purpose codec. Expanding decompresses the remainder and splices the decoded
payloads back at their recorded offsets, then checks the result's blake2b digest, so the file
``unpack`` writes is identical to the one ``pack`` read.

Which tensors become streams: the inputs of every ``ai.onnxcompress`` decode node of the main graph
(k-bit ``codes``/``gaps`` streams, 1-bit ``mask`` streams, float ``codebook``/``values``) plus the
main graph's other float initializers of at least ``MIN_WEIGHT_BYTES``. Each is coded every way
that applies and the smallest wins; a transform (unpacking codes, run lengths, byte shuffling) is
only used after checking that it reproduces the exact bytes.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import zlib
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxcompress import entropy
from onnxcompress.container import format as fmt
from onnxcompress.entropy import raw as rawcoder
from onnxcompress.errors import ConfigError, ContainerError, EncodingError, InvalidModelError
from onnxcompress.ops import DECODE_OPS, DOMAIN

if TYPE_CHECKING:
    import onnx

try:  # optional: without it the remainder and float streams fall back to lzma / zlib
    import zstandard as _zstd
except ImportError:  # pragma: no cover - exercised only where zstandard is missing
    _zstd = None  # type: ignore[assignment]

MIN_WEIGHT_BYTES = 256
#: Float element sizes by TensorProto data type (FLOAT, FLOAT16, DOUBLE, BFLOAT16).
_FLOAT_SIZES = {1: 4, 10: 2, 11: 8, 16: 2}


# --------------------------------------------------------------------------- statistics


@dataclass
class StreamStats:
    """How one tensor was coded; ``bits_per_symbol`` beside the order-0 entropy of its symbols."""

    name: str
    role: str
    kind: str
    coder: str
    symbols: int
    alphabet: int
    tensor_bytes: int
    coded_bytes: int
    bits_per_symbol: float
    entropy_bits: float


@dataclass
class Step:
    """One step of the Deep Compression staircase."""

    name: str
    bytes: int
    ratio: float


@dataclass
class ContainerStats:
    """What :func:`write_container` produced."""

    path: str | None
    model_bytes: int
    container_bytes: int
    remainder_bytes: int
    remainder_coded_bytes: int
    remainder_codec: str
    streams: list[StreamStats] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Expanded .onnx bytes over container bytes."""
        return self.model_bytes / max(1, self.container_bytes)


# --------------------------------------------------------------------------- protobuf wire walk


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _fields(buf: bytes, start: int, end: int) -> Iterable[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, value_start, value_end)`` of one message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        fno, wt = key >> 3, key & 7
        if wt == 0:
            _, nxt = _varint(buf, pos, end)
        elif wt == 1:
            nxt = pos + 8
        elif wt == 2:
            ln, pos = _varint(buf, pos, end)
            nxt = pos + ln
        elif wt == 5:
            nxt = pos + 4
        else:
            raise ValueError("unsupported wire type")
        if nxt > end:
            raise ValueError("field overruns its message")
        yield fno, wt, pos, nxt
        pos = nxt


def locate_raw_data(buf: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of ``raw_data`` of the main graph's initializers, by tensor name.

    ModelProto.graph is field 7, GraphProto.initializer field 5, TensorProto.name field 8 and
    raw_data field 9. Tensors whose name repeats, or with several raw_data fields (protobuf would
    merge them), are left out: they then simply stay in the remainder.
    """
    found: dict[str, tuple[int, int]] = {}
    dup: set[str] = set()
    try:
        for fno, wt, gs, ge in _fields(buf, 0, len(buf)):
            if fno != 7 or wt != 2:
                continue
            for gfno, gwt, ts, te in _fields(buf, gs, ge):
                if gfno != 5 or gwt != 2:
                    continue
                name: str | None = None
                raws: list[tuple[int, int]] = []
                for tfno, twt, vs, ve in _fields(buf, ts, te):
                    if tfno == 8 and twt == 2:
                        name = buf[vs:ve].decode("utf-8", errors="replace")
                    elif tfno == 9 and twt == 2:
                        raws.append((vs, ve))
                if name is None:
                    continue
                if name in found or name in dup or len(raws) != 1:
                    dup.add(name)
                    found.pop(name, None)
                    continue
                found[name] = raws[0]
    except ValueError:
        return {}  # unparseable wire data: code nothing, keep everything in the remainder
    return found


# --------------------------------------------------------------------------- byte codecs


def _zstd_level(n: int) -> int:
    return 19 if n <= (8 << 20) else 9


def compress_bytes(data: bytes, codec: int) -> bytes:
    """Compress with a byte codec id (``fmt.CODEC_*``)."""
    if codec == fmt.CODEC_STORED:
        return bytes(data)
    if codec == fmt.CODEC_ZSTD:
        if _zstd is None:
            raise ConfigError("zstd needs the optional dependency 'zstandard'")
        return _zstd.ZstdCompressor(level=_zstd_level(len(data)), write_content_size=True).compress(data)
    if codec == fmt.CODEC_LZMA:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)
    if codec == fmt.CODEC_ZLIB:
        return zlib.compress(data, 9)
    raise ValueError(f"unknown byte codec {codec}")


def decompress_bytes(data: bytes, codec: int, length: int) -> bytes:
    """Decompress to exactly ``length`` bytes; never produces (or allocates) more than that."""
    try:
        if codec == fmt.CODEC_STORED:
            out = data
        elif codec == fmt.CODEC_ZSTD:
            if _zstd is None:
                raise ContainerError("this container uses zstd: install the optional dependency 'zstandard'")
            declared = _zstd.frame_content_size(data)
            if declared not in (-1, length):
                raise ContainerError("zstd frame declares a different size than its record")
            with _zstd.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                out = reader.read(length + 1)
        elif codec == fmt.CODEC_LZMA:
            dx = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = dx.decompress(data, max_length=length + 1)
            if not dx.eof or dx.unused_data:
                raise ContainerError("lzma stream is incomplete or has trailing data")
        elif codec == fmt.CODEC_ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(data, length + 1)
            if not d.eof or d.unused_data:
                raise ContainerError("zlib stream is incomplete or has trailing data")
        else:
            raise ContainerError(f"unknown byte codec {codec}")
    except ContainerError:
        raise
    except Exception as exc:
        raise ContainerError(f"corrupt {fmt.CODER_LABELS.get(codec, codec)} data ({exc})") from None
    if len(out) != length:
        raise ContainerError(f"{fmt.CODER_LABELS.get(codec, codec)} data expands to the wrong size")
    return bytes(out)


def _best_byte_codec() -> int:
    return fmt.CODEC_ZSTD if _zstd is not None else fmt.CODEC_LZMA


# --------------------------------------------------------------------------- stream transforms


def runs_encode(packed: bytes) -> np.ndarray:
    """A 1-bit stream (LSB first) as zero-run symbols: value v < 255 is "v zeros then a one",
    255 is "255 zeros, go on"; the last symbol (< 255) is the zeros after the last one."""
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), bitorder="little")
    ones = np.flatnonzero(bits)
    n = bits.size
    last = int(ones[-1]) if ones.size else -1
    runs = np.concatenate((np.diff(ones, prepend=-1) - 1, [n - 1 - last])).astype(np.int64)
    reps = runs // 255
    ends = np.cumsum(reps + 1) - 1
    out = np.full(int(ends[-1]) + 1, 255, dtype=np.uint8)
    out[ends] = (runs % 255).astype(np.uint8)
    return out


def runs_decode(symbols: np.ndarray, length: int) -> bytes:
    """Inverse of :func:`runs_encode` for a stream of ``length`` bytes (checks the total first)."""
    s = np.asarray(symbols, dtype=np.int64)
    if s.size == 0 or s[-1] == 255:
        raise ContainerError("run-length stream does not end with a terminal run")
    idx = np.flatnonzero(s != 255)
    esc = np.diff(idx, prepend=-1) - 1
    runs = esc * 255 + s[idx]
    nbits = length * 8
    if int(runs.sum()) + runs.size - 1 != nbits:
        raise ContainerError("run-length stream does not cover its declared length")
    bits = np.zeros(nbits, dtype=np.uint8)
    bits[np.cumsum(runs[:-1] + 1) - 1] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def shuffle(data: bytes, elem: int) -> bytes:
    """Group byte ``j`` of every element together (exponent bytes compress far better)."""
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, elem).T.tobytes()


def unshuffle(data: bytes, elem: int) -> bytes:
    """Inverse of :func:`shuffle`."""
    return np.frombuffer(data, dtype=np.uint8).reshape(elem, -1).T.tobytes()


# --------------------------------------------------------------------------- model analysis


@dataclass
class _Spec:
    """What the packer knows of one tensor. ``role`` is the decode input's name (``codes``,
    ``gaps``, ``mask``, ``codebook``, ``values``, ``segments``; ``weight`` for other floats)."""

    role: str
    bits: int = 0  # k for code streams, 1 for masks
    count: int = 0  # declared code count (size, kept or entries)
    elem: int = 0  # float element size


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def stream_specs(model: onnx.ModelProto) -> dict[str, _Spec]:
    """What each initializer feeding a decode node is (role, bit width, declared count).

    Read from the decode operator table (:data:`onnxcompress.ops.DECODE_OPS`): each input's
    :class:`~onnxcompress.ops.spec.Input` says whether it is a bit-packed stream and which of the
    node's attributes hold its width and code count (docs/format.md Part 1)."""
    inits = {t.name: t for t in model.graph.initializer}
    specs: dict[str, _Spec] = {}
    for node in model.graph.node:
        op = DECODE_OPS.get(node.op_type) if node.domain == DOMAIN else None
        if op is None:
            continue
        at = _attrs(node)
        for inp, name in zip(op.inputs, node.input, strict=False):
            if name not in inits or name in specs:
                continue
            t = inits[name]
            try:
                if inp.kind == "stream":
                    bits, count = inp.stream_shape(at)
                    specs[name] = _Spec(inp.name, bits, count)
                elif inp.kind == "float" and t.data_type in _FLOAT_SIZES:
                    specs[name] = _Spec(inp.name, elem=_FLOAT_SIZES[t.data_type])
                else:
                    specs[name] = _Spec(inp.name)
            except (KeyError, TypeError, ValueError):
                specs[name] = _Spec(inp.name)
    _runtime_code_specs(model, inits, specs)
    for t in model.graph.initializer:
        if t.name not in specs and t.data_type in _FLOAT_SIZES and len(t.raw_data) >= MIN_WEIGHT_BYTES:
            specs[t.name] = _Spec("weight", elem=_FLOAT_SIZES[t.data_type])
    return specs


def _runtime_code_specs(model: onnx.ModelProto, inits: dict[str, Any], specs: dict[str, _Spec]) -> None:
    """Codes of ``format: runtime`` weights (MatMulNBits ``B``, GatherBlockQuantized ``data``, the
    uint8/uint4 input of a ``Cast``, nibble pairs unpacked by ``BitShift``, the int8 weight of a
    ``MatMulInteger``/``ConvInteger``) are k-bit codes packed low bits first, which is Part 1's bit
    packing: code them as ``codes`` streams (kind 1) like the codebook indices (8-bit ones as bytes)."""
    import onnx

    from onnxcompress.inventory import iter_graphs

    for _, g in iter_graphs(model.graph):
        for node in g.node:
            at = _attrs(node) if node.op_type in ("MatMulNBits", "GatherBlockQuantized") else {}
            if node.domain == "com.microsoft" and node.op_type == "MatMulNBits" and len(node.input) > 1:
                name, bits = node.input[1], int(at.get("bits", 4))
            elif node.domain == "com.microsoft" and node.op_type == "GatherBlockQuantized" and node.input:
                name, bits = node.input[0], int(at.get("bits", 4))
            elif node.op_type == "Cast" and node.domain in ("", "ai.onnx") and node.input:
                name, bits = node.input[0], 0
            elif node.op_type == "BitShift" and node.domain in ("", "ai.onnx") and node.input:
                name, bits = node.input[0], 4  # two 4-bit codes per byte (fold below opset 21)
            elif (
                node.op_type in ("MatMulInteger", "ConvInteger")
                and node.domain in ("", "ai.onnx")
                and len(node.input) > 1
            ):
                name, bits = node.input[1], 8  # activations int8: int8 codes, coded as bytes
            else:
                continue
            t = inits.get(name)
            if t is None or name in specs or len(t.raw_data) < MIN_WEIGHT_BYTES:
                continue
            if t.data_type == onnx.TensorProto.INT8 and node.op_type in ("MatMulInteger", "ConvInteger"):
                pass
            elif t.data_type == onnx.TensorProto.UINT8 and bits in (0, 2, 4, 8):
                bits = bits or 8
            elif t.data_type == onnx.TensorProto.UINT4 and bits == 0:
                bits = 4
            else:
                continue
            # 8-bit codes are bytes: the opaque path tries byte codecs (LZ finds the repeated blocks
            # of dead input rows) as well as byte-symbol ANS
            specs[name] = _Spec("codes", bits, len(t.raw_data) * 8 // bits) if bits < 8 else _Spec("other")


# --------------------------------------------------------------------------- choosing encodings


def _coder_names(coder: str) -> list[str]:
    if coder == "auto":
        return entropy.available_coders()
    if coder not in entropy.CODER_NAMES:
        raise ConfigError(f"unknown coder {coder!r}: choose auto, ans, huffman or raw")
    if coder == "ans" and not entropy.ans.available():
        raise ConfigError(
            "the ANS coder needs the optional dependency 'constriction' (pip install constriction)"
        )
    return [coder]


def _code_candidates(
    data: bytes, spec: _Spec, coders: list[str]
) -> list[tuple[int, int, int, int, int, bytes]]:
    """Candidates ``(kind, bits, coder, count, alphabet, payload)`` for one tensor."""
    out: list[tuple[int, int, int, int, int, bytes]] = [
        (fmt.KIND_BYTES, 0, fmt.CODEC_STORED, len(data), 256, bytes(data))
    ]
    if not data:
        return out
    k = spec.bits
    if spec.role in ("codes", "gaps", "mask") and 1 <= k <= 8 and len(data) % k == 0:
        count = spec.count
        if not (0 < count and -(-count // 8) * k == len(data)):
            count = len(data) * 8 // k  # code every slot, padding included
        symbols = rawcoder.unpack_bits(data, count, k)
        if rawcoder.pack_bits(symbols, k) != bytes(data):  # nonzero padding: code all slots
            count = len(data) * 8 // k
            symbols = rawcoder.unpack_bits(data, count, k)
        if rawcoder.pack_bits(symbols, k) == bytes(data):
            for name in coders:
                payload = entropy.get_coder(name).encode(symbols, 1 << k)
                out.append((fmt.KIND_CODES, k, entropy.CODER_NAMES[name], count, 1 << k, payload))
        if k == 1:
            runs = runs_encode(data)
            if runs_decode(runs, len(data)) == bytes(data):
                for name in coders:
                    payload = entropy.get_coder(name).encode(runs, 256)
                    out.append((fmt.KIND_RUNS, 1, entropy.CODER_NAMES[name], runs.size, 256, payload))
        return out
    # Float or opaque bytes: general-purpose codecs, plain and byte-shuffled, and byte-symbol coders.
    variants = [(fmt.KIND_BYTES, 0, bytes(data))]
    if spec.elem > 1 and len(data) % spec.elem == 0:
        variants.append((fmt.KIND_SHUFFLED, spec.elem, shuffle(data, spec.elem)))
    for kind, bits, blob in variants:
        out.append((kind, bits, _best_byte_codec(), len(blob), 256, compress_bytes(blob, _best_byte_codec())))
        symbols = np.frombuffer(blob, dtype=np.uint8)
        for name in coders:
            if name == "raw":
                continue  # identical to stored
            payload = entropy.get_coder(name).encode(symbols, 256)
            out.append((kind, bits, entropy.CODER_NAMES[name], len(blob), 256, payload))
    return out


def _decode_record(rec: fmt.StreamRecord) -> bytes:
    """A stream record back to the tensor's exact raw_data bytes (record already validated)."""
    if rec.coder in fmt.BYTE_CODECS:
        blob = decompress_bytes(rec.payload, rec.coder, rec.length)
        return unshuffle(blob, rec.bits) if rec.kind == fmt.KIND_SHUFFLED else blob
    symbols = entropy.get_coder(rec.coder).decode(rec.payload, rec.count, rec.alphabet)
    if symbols.size != rec.count:
        raise ContainerError(f"stream {rec.name!r} decoded {symbols.size} symbols, expected {rec.count}")
    if rec.kind == fmt.KIND_CODES:
        return rawcoder.pack_bits(symbols, rec.bits)
    if rec.kind == fmt.KIND_RUNS:
        return runs_decode(symbols, rec.length)
    blob = symbols.astype(np.uint8, copy=False).tobytes()
    return unshuffle(blob, rec.bits) if rec.kind == fmt.KIND_SHUFFLED else blob


def _entropy_of(kind: int, bits: int, data: bytes, count: int) -> tuple[int, float]:
    if kind == fmt.KIND_CODES:
        sym = rawcoder.unpack_bits(data, count, bits)
        return 1 << bits, entropy.order0_entropy(sym, 1 << bits)
    if kind == fmt.KIND_RUNS:
        return 256, entropy.order0_entropy(runs_encode(data), 256)
    blob = shuffle(data, bits) if kind == fmt.KIND_SHUFFLED else data
    return 256, entropy.order0_entropy(np.frombuffer(blob, dtype=np.uint8), 256)


# --------------------------------------------------------------------------- pack / expand


def model_bytes_of(model: onnx.ModelProto | str | os.PathLike[str] | bytes) -> bytes:
    """The exact serialized model the container will reproduce.

    A path is read through :func:`onnxcompress.model_io.model_bytes` (as is, for byte identity
    with the file; a model with external data comes back re-serialized with its checked data
    inline, so the container is self-contained). Models above the protobuf limit are refused.
    """
    from onnxcompress.model_io import model_bytes, parse_model

    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        if _has_external(parse_model(data, "the given bytes")):
            raise InvalidModelError(
                "the model refers to external data: pass its path so the data can be read"
            )
        return data
    if isinstance(model, (str, os.PathLike)):
        return model_bytes(model)
    if _has_external(model):
        raise InvalidModelError("the model refers to external data that is not loaded: pass the model's path")
    if model.ByteSize() >= fmt.MAX_MODEL_BYTES:
        raise EncodingError(
            "the model is 2 GB or larger: the .onnxc container holds single-protobuf models only"
        )
    return model.SerializeToString()


def _has_external(proto: onnx.ModelProto) -> bool:
    from onnxcompress.model_io import has_external_data

    return has_external_data(proto)


#: ``pack_bytes``' optional memo of coded streams: (tensor digest, role, bits, count, elem, coders)
#: -> the chosen ``(kind, bits, coder, count, alphabet, payload)``.
StreamMemo = MutableMapping[tuple[Any, ...], tuple[int, int, int, int, int, bytes]]


def pack_bytes(
    data: bytes, *, coder: str = "auto", verify: bool = True, memo: StreamMemo | None = None
) -> tuple[bytes, ContainerStats]:
    """Build a container for the serialized model ``data``; returns its bytes and statistics.

    ``memo``: a dict shared by calls that pack many variants of one model (the search packs
    hundreds, each differing from the last in a few tensors). A tensor whose bytes and spec were
    coded before reuses that stream instead of trying every coder again; the coders are
    deterministic, so the container is byte-identical with or without it.
    """

    coders = _coder_names(coder)
    if len(data) > fmt.MAX_MODEL_BYTES:
        raise EncodingError(
            "the model is 2 GB or larger: the .onnxc container holds single-protobuf models only"
        )
    from onnxcompress.model_io import parse_model

    proto = parse_model(data, "the model to pack")
    specs = stream_specs(proto)
    ranges = locate_raw_data(data)
    chosen = sorted((ranges[n], n) for n in specs if n in ranges and ranges[n][1] > ranges[n][0])
    streams: list[fmt.StreamRecord] = []
    stats: list[StreamStats] = []
    pieces: list[bytes] = []
    prev = 0
    for (start, end), name in chosen:
        spec = specs[name]
        tensor = data[start:end]
        key: tuple[Any, ...] | None = None
        best = None
        if memo is not None:
            digest = hashlib.blake2b(tensor, digest_size=16).digest()
            key = (digest, len(tensor), spec.role, spec.bits, spec.count, spec.elem, tuple(coders))
            best = memo.get(key)
        if best is None:
            best = min(_code_candidates(tensor, spec, coders), key=lambda c: len(c[5]))
            if memo is not None and key is not None:
                memo[key] = best
        kind, bits, cid, count, alphabet, payload = best
        rec = fmt.StreamRecord(
            start,
            end - start,
            kind,
            bits,
            cid,
            fmt.ROLE_IDS.get(spec.role, 0),
            count,
            alphabet,
            name,
            payload,
        )
        streams.append(rec)
        pieces.append(data[prev:start])
        prev = end
        alpha, ent = _entropy_of(kind, bits, tensor, count) if cid in fmt.ENTROPY_CODERS else (256, 0.0)
        if cid in fmt.BYTE_CODECS:
            blob = shuffle(tensor, bits) if kind == fmt.KIND_SHUFFLED else tensor
            ent = entropy.order0_entropy(np.frombuffer(blob, dtype=np.uint8), 256)
        stats.append(
            StreamStats(
                name,
                spec.role,
                fmt.KINDS[kind],
                fmt.CODER_LABELS[cid],
                count,
                alpha,
                end - start,
                len(payload),
                len(payload) * 8 / max(1, count),
                ent,
            )
        )
    pieces.append(data[prev:])
    remainder = b"".join(pieces)
    rcodec = _best_byte_codec()
    rstored = compress_bytes(remainder, rcodec)
    if len(rstored) >= len(remainder):
        rcodec, rstored = fmt.CODEC_STORED, remainder
    cont = fmt.Container(
        len(data), rcodec, len(remainder), rstored, streams, hashlib.blake2b(data, digest_size=16).digest()
    )
    blob = fmt.serialize(cont)
    if verify and expand(blob) != data:  # pragma: no cover - a bug guard, not an expected path
        raise EncodingError("internal error: the container does not reproduce the model; please report it")
    st = ContainerStats(
        None, len(data), len(blob), len(remainder), len(rstored), fmt.CODER_LABELS[rcodec], stats
    )
    st.steps = staircase(proto, model_bytes=len(data), container_bytes=len(blob))
    return blob, st


def expand(blob: bytes, *, max_model_bytes: int = fmt.MAX_MODEL_BYTES) -> bytes:
    """Container bytes back to the exact serialized model (all checks; ContainerError on failure)."""
    cont = fmt.parse(blob, max_model_bytes=max_model_bytes)
    remainder = decompress_bytes(cont.remainder, cont.remainder_codec, cont.remainder_raw_len)
    out = bytearray(cont.model_size)
    rpos = 0
    opos = 0
    for rec in cont.streams:
        gap = rec.offset - opos
        out[opos : rec.offset] = remainder[rpos : rpos + gap]
        rpos += gap
        try:
            tensor = _decode_record(rec)
        except ContainerError:
            raise
        except Exception as exc:  # any decoder failure on crafted input is a container error
            raise ContainerError(
                f"stream {rec.name!r} cannot be decoded ({type(exc).__name__}: {exc})"
            ) from None
        if len(tensor) != rec.length:
            raise ContainerError(f"stream {rec.name!r} decodes to {len(tensor)} bytes, expected {rec.length}")
        out[rec.offset : rec.offset + rec.length] = tensor
        opos = rec.offset + rec.length
    out[opos:] = remainder[rpos:]
    if rpos + (cont.model_size - opos) != len(remainder):
        raise ContainerError("container remainder does not fit the gaps between streams")
    if hashlib.blake2b(out, digest_size=16).digest() != cont.model_digest:
        raise ContainerError("the expanded model fails its checksum: the container is corrupt")
    return bytes(out)


# --------------------------------------------------------------------------- staircase


def staircase(
    model: onnx.ModelProto | str | os.PathLike[str] | bytes,
    *,
    model_bytes: int | None = None,
    container_bytes: int | None = None,
) -> list[Step]:
    """Deep Compression's staircase, computed from the compressed model alone.

    * original: every decoded weight at ``size`` x its output dtype's bytes, plus everything else
      in the file (graph, weights left alone);
    * pruned: sparse weights (relative/mask encodings) at kept weights x dtype bytes plus their
      position stream (gaps or mask) bytes; dense-coded weights at full size; plus the rest;
    * pruned + quantized: the compressed ``.onnx`` bytes;
    * entropy coded: the container bytes (when given).
    Ratios are original bytes over each step's bytes.
    """
    import onnx

    from onnxcompress.model_io import model_bytes as read_bytes
    from onnxcompress.model_io import parse_model

    if isinstance(model, (bytes, bytearray)):
        proto = parse_model(bytes(model), "the model")
        model_bytes = model_bytes or len(model)
    elif isinstance(model, (str, os.PathLike)):
        raw_bytes = read_bytes(model)
        proto = parse_model(raw_bytes, model)
        model_bytes = model_bytes or len(raw_bytes)
    else:
        proto = model
        model_bytes = model_bytes or proto.ByteSize()
    inits = {t.name: t for t in proto.graph.initializer}

    def nbytes(name: str) -> int:
        t = inits.get(name)
        if t is None:
            return 0
        if t.raw_data:
            return len(t.raw_data)
        return onnx.numpy_helper.to_array(t).nbytes

    payload = 0
    original_w = 0
    pruned_w = 0
    seen: set[str] = set()
    for node in proto.graph.node:
        op = DECODE_OPS.get(node.op_type) if node.domain == DOMAIN else None
        if op is None:
            continue
        at = _attrs(node)
        size = int(at.get("size", 0))
        to = int(at.get("to", 1))
        try:
            elem = onnx.helper.tensor_dtype_to_np_dtype(to).itemsize
        except Exception:
            elem = 4
        original_w += size * elem
        roles = dict(zip(op.input_names, node.input, strict=False))
        if op.positions is not None and op.kept is not None and op.positions in roles:
            kept = int(at.get(op.kept, 0))
            pruned_w += kept * elem + nbytes(roles[op.positions])
        else:
            pruned_w += size * elem
        for name in node.input:
            if name in inits and name not in seen:
                seen.add(name)
                payload += nbytes(name)
    rest = max(0, model_bytes - payload)
    original = original_w + rest
    steps = [
        Step("original", original, 1.0),
        Step("pruned", pruned_w + rest, original / max(1, pruned_w + rest)),
    ]
    steps.append(Step("pruned + quantized (.onnx)", model_bytes, original / max(1, model_bytes)))
    if container_bytes is not None:
        steps.append(Step("entropy coded (.onnxc)", container_bytes, original / max(1, container_bytes)))
    return steps


def format_report(stats: ContainerStats) -> str:
    """The staircase and the per-stream table as plain text, at most 100 columns wide (long stream
    names are cut in the middle)."""
    lines = ["step                              bytes      ratio"]
    for step in stats.steps:
        lines.append(f"{step.name:<28} {step.bytes:>11,} {step.ratio:>9.2f}x")
    lines.append("")
    lines.append(
        f"{'stream':<26} {'role':<8} {'kind':<8} {'coder':<7} {'symbols':>10} {'bytes':>9} {'coded':>9} "
        f"{'bits/sym':>8} {'H0':>6}"
    )
    for s in stats.streams:
        name = s.name if len(s.name) <= 26 else s.name[:11] + "..." + s.name[-12:]
        lines.append(
            f"{name:<26} {s.role:<8} {s.kind:<8} {s.coder:<7} {s.symbols:>10,} {s.tensor_bytes:>9,} "
            f"{s.coded_bytes:>9,} {s.bits_per_symbol:>8.3f} {s.entropy_bits:>6.3f}"
        )
    lines.append(
        f"{'(rest of the model)':<26} {'':<8} {'':<8} {stats.remainder_codec:<7} {'':>10} "
        f"{stats.remainder_bytes:>9,} {stats.remainder_coded_bytes:>9,}"
    )
    return "\n".join(lines)
