"""Pack k-bit codes into bytes exactly as the ONNX decode operators unpack them.

Layout (docs/format.md, "Bit-packed stream"): LSB-first bit stream, padded with zero codes to a
multiple of 8 codes, so each group of 8 codes fills exactly ``bits`` bytes. The decode functions
rely on that group structure to unpack with a handful of integer ops and no loops.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.errors import EncodingError

# codes per chunk in decompress (a multiple of 8, so every chunk starts on a byte boundary)
_DECOMPRESS_CHUNK_CODES = 1 << 20


def packed_size(count: int, bits: int) -> int:
    """Bytes a stream of ``count`` codes of ``bits`` bits occupies."""
    return -(-count // 8) * bits


def compress(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integer ``codes`` (each < 2**bits) into a uint8 stream."""
    if not 1 <= bits <= 8:
        raise EncodingError(f"bit width must be between 1 and 8, got {bits}")
    codes = np.asarray(codes).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise EncodingError(f"codes do not fit in {bits} bits (max {int(codes.max())})")
    count = codes.size
    padded = np.zeros(-(-count // 8) * 8, dtype=np.uint8)
    padded[:count] = codes
    if bits == 8:
        return padded
    # bit matrix [n, bits], LSB first, then packbits LSB-first over the flattened stream
    bitmat = (padded[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(bitmat.reshape(-1), bitorder="little")


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
