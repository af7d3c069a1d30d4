"""Pack k-bit codes into bytes exactly as the ONNX decode operators unpack them.

Layout (docs/format.md, "Bit-packed stream"): LSB-first bit stream, padded with zero codes to a
multiple of 8 codes, so each group of 8 codes fills exactly ``bits`` bytes. The decode functions
rely on that group structure to unpack with a handful of integer ops and no loops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcompress.errors import EncodingError

# codes per chunk in compress / decompress (multiples of 8, so every chunk starts on a byte boundary)
_COMPRESS_CHUNK_CODES = 1 << 20
_DECOMPRESS_CHUNK_CODES = 1 << 20


def packed_size(count: int, bits: int) -> int:
    """Bytes a stream of ``count`` codes of ``bits`` bits occupies."""
    return -(-count // 8) * bits


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise EncodingError(f"bit width must be between 1 and 8, got {bits}")


def _check_codes(parts: Sequence[np.ndarray], bits: int) -> None:
    bad = [p for p in parts if p.size and (p.min() < 0 or p.max() >= (1 << bits))]
    if bad:
        top = max(int(p.max()) for p in parts if p.size)
        raise EncodingError(f"codes do not fit in {bits} bits (max {top})")


def compress(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integer ``codes`` (each < 2**bits) into a uint8 stream.

    Packed a chunk of whole 8-code groups at a time (each fills ``bits`` bytes), so the bit matrix
    is a few MB rather than ``bits`` bytes per code.
    """
    _check_bits(bits)
    codes = np.asarray(codes).reshape(-1)
    _check_codes([codes], bits)
    count = codes.size
    if bits == 8:
        padded = np.zeros(-(-count // 8) * 8, dtype=np.uint8)
        padded[:count] = codes
        return padded
    out = np.empty(packed_size(count, bits), dtype=np.uint8)
    shifts = np.arange(bits, dtype=np.uint8)
    for a in range(0, count, _COMPRESS_CHUNK_CODES):
        b = min(a + _COMPRESS_CHUNK_CODES, count)
        chunk = np.zeros(-(-(b - a) // 8) * 8, dtype=np.uint8)
        chunk[: b - a] = codes[a:b]
        # bit matrix [n, bits], LSB first, then packbits LSB-first over the flattened stream
        bitmat = (chunk[:, None] >> shifts) & 1
        out[a // 8 * bits : a // 8 * bits + chunk.size // 8 * bits] = np.packbits(
            bitmat.reshape(-1), bitorder="little"
        )
    return out


def compress_parts(parts: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """:func:`compress` of the concatenation of ``parts``; at 8 bits the parts are copied straight
    into the (padded) stream, which is then the only copy."""
    _check_bits(bits)
    if bits != 8 or len(parts) == 1:
        return compress(np.concatenate(parts) if len(parts) != 1 else parts[0], bits)
    parts = [np.asarray(p).reshape(-1) for p in parts]
    _check_codes(parts, bits)
    count = sum(p.size for p in parts)
    padded = np.zeros(-(-count // 8) * 8, dtype=np.uint8)
    at = 0
    for p in parts:
        padded[at : at + p.size] = p
        at += p.size
    return padded


def decompress(stream: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Exact inverse of :func:`compress`: the first ``count`` codes as uint8."""
    stream = np.asarray(stream, dtype=np.uint8).reshape(-1)
    if stream.size != packed_size(count, bits):
        raise EncodingError(
            f"a stream of {count} {bits}-bit codes must hold {packed_size(count, bits)} bytes, got {stream.size}"
        )
    if bits == 8:
        return stream[:count].copy()
    weights = (1 << np.arange(bits)).astype(np.uint8)
    out = np.empty(count, dtype=np.uint8)
    # 8 codes fill `bits` whole bytes: chunks of whole groups keep the bit matrix (8x the stream) small
    step = _DECOMPRESS_CHUNK_CODES
    for a in range(0, count, step):
        b = min(a + step, count)
        chunk = stream[a * bits // 8 : (b + 7) // 8 * bits]
        bitmat = np.unpackbits(chunk, bitorder="little").reshape(-1, bits)
        out[a:b] = (bitmat @ weights)[: b - a]
    return out
