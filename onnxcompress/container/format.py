"""Binary layout of the ``.onnxc`` container: writer and strict, bounds-checked reader.

This module knows bytes only (no onnx, no entropy coding): it turns a :class:`Container` into bytes
and back, checking every length, offset and checksum, so that the decoding layer above only ever
sees records that are self-consistent. The layout is specified in ``docs/format.md`` Part 2; keep
the two in sync. All integers are little-endian.

    file     = header remainder stream* trailer
    header   = magic[8] version:u16 flags:u16 model_size:u64 n_streams:u32 header_crc:u32 reserved:u32
    remainder= codec:u8 pad[3] stored_len:u64 raw_len:u64 crc:u32 stored[stored_len]
    stream   = offset:u64 length:u64 kind:u8 bits:u8 coder:u8 role:u8 count:u64 alphabet:u32
               name_len:u32 payload_len:u64 payload_crc:u32 name[name_len] payload[payload_len]
    trailer  = model_blake2b_128[16] file_crc:u32
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from onnxcompress.errors import ContainerError
from onnxcompress.model_io import PROTOBUF_LIMIT

MAGIC = b"\x89ONNXC\r\n"
FORMAT_VERSION = 1

_HEADER = struct.Struct("<8sHHQIII")  # magic version flags model_size n_streams header_crc reserved
_REMAINDER = struct.Struct("<B3xQQI")  # codec stored_len raw_len crc
_STREAM = struct.Struct(
    "<QQBBBBQIIQI"
)  # offset length kind bits coder role count alphabet name_len payload_len crc
_TRAILER = struct.Struct("<16sI")

#: No legitimate container expands beyond the one protobuf limit (a container holds one protobuf).
MAX_MODEL_BYTES = PROTOBUF_LIMIT
MAX_STREAMS = 1 << 20
MAX_NAME_BYTES = 4096

# Stream kinds: how the tensor's bytes map to the coded symbols.
KIND_BYTES = 0  # the tensor's bytes themselves, alphabet 256, count = length
KIND_CODES = 1  # Part 1 bit-packed k-bit codes, alphabet 2**k, count codes (padding codes are zero)
KIND_SHUFFLED = 2  # float bytes regrouped by byte significance (element size in ``bits``), alphabet 256
KIND_RUNS = 3  # a 1-bit stream as zero-run lengths with escape 255, alphabet 256
KINDS = {KIND_BYTES: "bytes", KIND_CODES: "codes", KIND_SHUFFLED: "shuffled", KIND_RUNS: "runs"}

# Coder ids: 0-2 are entropy coders over symbols (onnxcompress.entropy), 8-11 byte codecs.
CODER_RAW, CODER_HUFFMAN, CODER_ANS = 0, 1, 2
CODEC_STORED, CODEC_ZLIB, CODEC_LZMA, CODEC_ZSTD = 8, 9, 10, 11
CODER_LABELS = {0: "raw", 1: "huffman", 2: "ans", 8: "stored", 9: "zlib", 10: "lzma", 11: "zstd"}
ENTROPY_CODERS = {CODER_RAW, CODER_HUFFMAN, CODER_ANS}
BYTE_CODECS = {CODEC_STORED, CODEC_ZLIB, CODEC_LZMA, CODEC_ZSTD}

# Roles are informational (statistics); a reader needs none of them to rebuild the model.
ROLES = {0: "other", 1: "codes", 2: "gaps", 3: "mask", 4: "codebook", 5: "values", 6: "segments", 7: "weight"}
ROLE_IDS = {v: k for k, v in ROLES.items()}


@dataclass
class StreamRecord:
    """One tensor's raw_data bytes, spliced into the expanded model at ``offset``."""

    offset: int
    length: int
    kind: int
    bits: int
    coder: int
    role: int
    count: int
    alphabet: int
    name: str
    payload: bytes


@dataclass
class Container:
    """Everything a container holds; ``model_digest`` is blake2b-128 of the expanded model."""

    model_size: int
    remainder_codec: int
    remainder_raw_len: int
    remainder: bytes
    streams: list[StreamRecord] = field(default_factory=list)
    model_digest: bytes = b"\0" * 16


def serialize(c: Container) -> bytes:
    """Lay out ``c`` as bytes (no validation beyond what struct packing enforces)."""
    parts: list[bytes] = []
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, c.model_size, len(c.streams), 0, 0)
    header_crc = zlib.crc32(head[:24])
    parts.append(_HEADER.pack(MAGIC, FORMAT_VERSION, 0, c.model_size, len(c.streams), header_crc, 0))
    parts.append(
        _REMAINDER.pack(c.remainder_codec, len(c.remainder), c.remainder_raw_len, zlib.crc32(c.remainder))
    )
    parts.append(c.remainder)
    for s in c.streams:
        name = s.name.encode("utf-8")[:MAX_NAME_BYTES]
        parts.append(
            _STREAM.pack(
                s.offset,
                s.length,
                s.kind,
                s.bits,
                s.coder,
                s.role,
                s.count,
                s.alphabet,
                len(name),
                len(s.payload),
                zlib.crc32(s.payload),
            )
        )
        parts.append(name)
        parts.append(s.payload)
    body = b"".join(parts)
    body += c.model_digest
    return body + struct.pack("<I", zlib.crc32(body))


def _check_stream_fields(s: StreamRecord, where: str) -> None:
    """Kind/coder/count consistency: caps every count by what the tensor's bytes can hold."""
    if s.kind not in KINDS:
        raise ContainerError(f"{where}: unknown stream kind {s.kind}")
    if s.coder not in CODER_LABELS:
        raise ContainerError(f"{where}: unknown coder id {s.coder}")
    if s.kind == KIND_CODES:
        if not 1 <= s.bits <= 8 or s.alphabet != 1 << s.bits:
            raise ContainerError(f"{where}: code stream with bit width {s.bits} and alphabet {s.alphabet}")
        if -(-s.count // 8) * s.bits != s.length:
            raise ContainerError(f"{where}: {s.count} codes of {s.bits} bits do not fill {s.length} bytes")
    elif s.kind == KIND_RUNS:
        if s.bits != 1 or s.alphabet != 256 or not 1 <= s.count <= s.length * 8 + 1:
            raise ContainerError(f"{where}: malformed run-length stream header")
    else:
        if s.alphabet != 256 or s.count != s.length:
            raise ContainerError(f"{where}: byte stream declares {s.count} symbols for {s.length} bytes")
        if s.kind == KIND_SHUFFLED and (s.bits not in (2, 4, 8) or s.length % s.bits):
            raise ContainerError(f"{where}: shuffled stream with element size {s.bits} and {s.length} bytes")
    if s.coder in BYTE_CODECS and s.kind not in (KIND_BYTES, KIND_SHUFFLED):
        raise ContainerError(f"{where}: byte codec used on a symbol stream")
    if s.coder == CODEC_STORED and len(s.payload) != s.length:
        raise ContainerError(f"{where}: stored stream has {len(s.payload)} bytes, expected {s.length}")
    if s.coder == CODER_RAW:
        width = max(1, (s.alphabet - 1).bit_length())
        if len(s.payload) != -(-(s.count * width) // 8):
            raise ContainerError(f"{where}: raw-coded stream has the wrong length")


def parse(data: bytes | bytearray | memoryview, *, max_model_bytes: int = MAX_MODEL_BYTES) -> Container:
    """Parse and validate a container. Checks, in order: magic, version, whole-file checksum, then
    every record's bounds; payload checksums are verified here too, before anything is decoded."""
    data = bytes(data)
    n = len(data)
    if n < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ContainerError("not an .onnxc container (bad magic bytes)")
    if n < _HEADER.size:
        raise ContainerError("container is truncated inside its header")
    magic, version, flags, model_size, n_streams, header_crc, reserved = _HEADER.unpack_from(data, 0)
    if version != FORMAT_VERSION:
        raise ContainerError(
            f"unsupported .onnxc format version {version} (this onnxcompress reads version {FORMAT_VERSION}; "
            "upgrade onnxcompress or re-pack the model)"
        )
    if n < _HEADER.size + _REMAINDER.size + _TRAILER.size:
        raise ContainerError("container is truncated")
    (file_crc,) = struct.unpack_from("<I", data, n - 4)
    if zlib.crc32(memoryview(data)[: n - 4]) != file_crc:
        raise ContainerError("container checksum mismatch: the file is corrupt or truncated")
    if header_crc != zlib.crc32(data[:24]) or flags or reserved:
        raise ContainerError("container header is corrupt (header checksum or reserved fields)")
    if model_size > max_model_bytes:
        raise ContainerError(
            f"container declares a {model_size}-byte model, above the {max_model_bytes}-byte limit"
        )
    if n_streams > MAX_STREAMS:
        raise ContainerError(f"container declares {n_streams} streams (limit {MAX_STREAMS})")
    end = n - _TRAILER.size
    pos = _HEADER.size
    codec, stored_len, raw_len, rcrc = _REMAINDER.unpack_from(data, pos)
    pos += _REMAINDER.size
    if codec not in BYTE_CODECS or stored_len > end - pos or raw_len > model_size:
        raise ContainerError("container remainder record is malformed")
    if codec == CODEC_STORED and stored_len != raw_len:
        raise ContainerError("stored remainder length disagrees with its raw length")
    remainder = data[pos : pos + stored_len]
    pos += stored_len
    if zlib.crc32(remainder) != rcrc:
        raise ContainerError("container remainder checksum mismatch")
    streams: list[StreamRecord] = []
    covered = raw_len
    prev_end = 0
    for i in range(n_streams):
        if _STREAM.size > end - pos:
            raise ContainerError(f"container is truncated in stream record {i}")
        (offset, length, kind, bits, coder, role, count, alphabet, name_len, payload_len, pcrc) = (
            _STREAM.unpack_from(data, pos)
        )
        pos += _STREAM.size
        if name_len > MAX_NAME_BYTES or payload_len > end - pos - name_len:
            raise ContainerError(f"stream record {i} declares more bytes than the container holds")
        try:
            name = data[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError:
            raise ContainerError(f"stream record {i} has a malformed name") from None
        pos += name_len
        payload = data[pos : pos + payload_len]
        pos += payload_len
        where = f"stream {i} ({name!r})"
        if offset < prev_end or length > model_size or offset > model_size - length:
            raise ContainerError(f"{where}: offset/length out of order or outside the model")
        prev_end = offset + length
        covered += length
        if covered > model_size:
            raise ContainerError("container streams and remainder exceed the declared model size")
        if zlib.crc32(payload) != pcrc:
            raise ContainerError(f"{where}: payload checksum mismatch")
        rec = StreamRecord(offset, length, kind, bits, coder, role, count, alphabet, name, payload)
        _check_stream_fields(rec, where)
        streams.append(rec)
    if pos != end:
        raise ContainerError("container has unexpected bytes after its last stream")
    if covered != model_size:
        raise ContainerError("container streams and remainder do not add up to the declared model size")
    (digest, _) = _TRAILER.unpack_from(data, end)
    return Container(model_size, codec, raw_len, remainder, streams, digest)


def looks_like_container(data: bytes) -> bool:
    """Whether ``data`` starts with the container magic."""
    return data[: len(MAGIC)] == MAGIC
