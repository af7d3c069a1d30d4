"""Raw coder and the bit-packing primitives every other coder and the container share.

The raw coder stores each symbol in ``k = ceil(log2(alphabet_size))`` bits, LSB first, exactly as
``docs/format.md`` Part 1 packs code streams. It is the fallback ``choose_best`` always has: tiny
streams where a frequency table would cost more than it saves, and near-uniform streams.

Everything here is pure numpy: the container decodes untrusted bytes with it, so every function
validates lengths before allocating.
"""

from __future__ import annotations

import numpy as np

from onnxcompress.errors import ContainerError

NAME = "raw"
CODER_ID = 0


def bits_for_alphabet(alphabet_size: int) -> int:
    """Bits per symbol needed to store any symbol of ``range(alphabet_size)`` (at least 1)."""
    if alphabet_size < 1 or alphabet_size > 65536:
        raise ValueError(f"alphabet_size must be in 1..65536, got {alphabet_size}")
    return max(1, int(alphabet_size - 1).bit_length())


def symbol_dtype(alphabet_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every symbol of the alphabet."""
    return np.dtype(np.uint8) if alphabet_size <= 256 else np.dtype(np.uint16)


def packed_size(count: int, bits: int, *, pad_to_8_codes: bool) -> int:
    """Byte length of ``count`` codes of ``bits`` bits, with Part 1's padding or byte padding only."""
    if pad_to_8_codes:
        return -(-count // 8) * bits
    return -(-(count * bits) // 8)


def pack_bits(codes: np.ndarray, bits: int, *, pad_to_8_codes: bool = True) -> bytes:
    """Pack ``codes`` (each < 2**bits, 1 <= bits <= 16) LSB first, zero-padded.

    With ``pad_to_8_codes`` the result is Part 1's stream (``ceil(count/8) * bits`` bytes); without,
    it is trimmed to whole bytes. Groups of 8 codes fill exactly ``bits`` bytes, so for bits <= 8 a
    group is assembled in one uint64 per group (fast, no per-bit expansion).
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {bits}")
    codes = np.ascontiguousarray(codes).ravel()
    count = codes.size
    groups = -(-count // 8)
    padded = np.zeros(groups * 8, dtype=np.uint64)
    padded[:count] = codes
    if count and int(codes.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    if bits <= 8:
        shifts = (np.arange(8, dtype=np.uint64) * np.uint64(bits)).astype(np.uint64)
        words = (padded.reshape(groups, 8) << shifts).sum(axis=1, dtype=np.uint64)
        out = words.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :bits].ravel()
    else:
        out = np.empty(groups * bits, dtype=np.uint8)
        chunk = 1 << 20  # groups per chunk: bounded temporaries
        for g0 in range(0, groups, chunk):
            g1 = min(groups, g0 + chunk)
            part = padded[g0 * 8 : g1 * 8].astype("<u2").view(np.uint8)
            bitmat = np.unpackbits(part, bitorder="little").reshape(-1, 16)[:, :bits]
            out[g0 * bits : g1 * bits] = np.packbits(bitmat.ravel(), bitorder="little")
    if not pad_to_8_codes:
        out = out[: packed_size(count, bits, pad_to_8_codes=False)]
    return out.tobytes()


def unpack_bits(
    data: bytes | np.ndarray, count: int, bits: int, *, pad_to_8_codes: bool = True
) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` codes as uint8 (bits <= 8) or uint16.

    Raises ContainerError when ``data`` does not have exactly the length the layout implies, so a
    declared count can never make us read past (or allocate beyond) what the bytes hold.
    """
    if not 1 <= bits <= 16:
        raise ContainerError(f"bit width {bits} is outside 1..16")
    buf = (
        np.frombuffer(data, dtype=np.uint8)
        if not isinstance(data, np.ndarray)
        else data.view(np.uint8).ravel()
    )
    expected = packed_size(count, bits, pad_to_8_codes=pad_to_8_codes)
    if count < 0 or buf.size != expected:
        raise ContainerError(
            f"packed stream holds {buf.size} bytes, {count} codes of {bits} bits need {expected}"
        )
    groups = -(-count // 8)
    full = np.zeros(groups * bits, dtype=np.uint8)
    full[: buf.size] = buf
    dtype = np.uint8 if bits <= 8 else np.uint16
    if bits <= 8:
        g = np.zeros((groups, 8), dtype=np.uint8)
        g[:, :bits] = full.reshape(groups, bits)
        words = g.view("<u8").ravel()
        shifts = (np.arange(8, dtype=np.uint64) * np.uint64(bits)).astype(np.uint64)
        mask = np.uint64((1 << bits) - 1)
        codes = ((words[:, None] >> shifts) & mask).astype(dtype).ravel()
    else:
        codes = np.empty(groups * 8, dtype=dtype)
        chunk = 1 << 20
        for g0 in range(0, groups, chunk):
            g1 = min(groups, g0 + chunk)
            bitmat = np.unpackbits(full[g0 * bits : g1 * bits], bitorder="little").reshape(-1, bits)
            wide = np.zeros((bitmat.shape[0], 16), dtype=np.uint8)
            wide[:, :bits] = bitmat
            codes[g0 * 8 : g1 * 8] = np.packbits(wide, axis=1, bitorder="little").view("<u2").ravel()
    return codes[:count]


def encode(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Store every symbol in ``bits_for_alphabet(alphabet_size)`` bits (no header: all is implied)."""
    symbols = np.asarray(symbols)
    if symbols.size and int(symbols.max()) >= alphabet_size:
        raise ValueError("symbol outside the alphabet")
    return pack_bits(symbols, bits_for_alphabet(alphabet_size), pad_to_8_codes=False)


def decode(payload: bytes, count: int, alphabet_size: int) -> np.ndarray:
    """Exact inverse of :func:`encode`; the payload length must match ``count`` exactly."""
    bits = bits_for_alphabet(alphabet_size)
    out = unpack_bits(payload, count, bits, pad_to_8_codes=False)
    if out.size and int(out.max()) >= alphabet_size:
        raise ContainerError("raw stream holds a symbol outside its alphabet")
    return out.astype(symbol_dtype(alphabet_size), copy=False)
