"""Asymmetric numeral systems via ``constriction`` (optional dependency): reaches order-0 entropy.

DESIGN-NOTES measured constriction's stack ANS at the order-0 entropy (3.1708 vs 3.171 bits/symbol)
at ~150 MB/s encode, ~38 MB/s decode. The model is a categorical distribution built from a
frequency table stored in the payload, quantized by us to integers summing to ``2**precision`` with
every present symbol at least 1, so that no present symbol can ever get probability zero;
constriction then maps it onto its own 24-bit fixed point (``Categorical(freqs, perfect=False)``),
identically in the encoder and the decoder. The precision (1..16 bits) is chosen per stream to
minimize table plus estimated code size: small streams get a coarse, cheap table.

Payload layout (little-endian):

    u8  precision       the frequencies sum to 2**precision (1..16)
    u16 nfreq - 1       frequencies follow for symbols 0..nfreq-1 (the rest are absent)
    ...                 nfreq frequencies as unsigned LEB128 varints
    ...                 the rest: constriction's compressed words, uint32 little-endian
                        (``AnsCoder.get_compressed()`` after ``encode_reverse`` of all symbols)

A single present symbol (the whole mass) carries no words: decoding repeats it ``count`` times.
"""

from __future__ import annotations

import struct

import numpy as np

from onnxcompress.entropy import raw
from onnxcompress.errors import ContainerError

NAME = "ans"
CODER_ID = 2
#: Largest precision of the stored frequency table (its total is 2**precision).
PRECISION_BITS = 16

try:  # optional: without it the container offers Huffman and raw only
    import constriction as _constriction
except ImportError:  # pragma: no cover - exercised only where constriction is missing
    _constriction = None


def available() -> bool:
    """Whether constriction is importable (ANS is skipped by ``choose_best`` otherwise)."""
    return _constriction is not None


def quantize_frequencies(counts: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """Scale ``counts`` to integers summing to ``2**precision_bits``, every nonzero count >= 1.

    Largest-remainder rounding, then the floor of 1 for rare symbols is paid for by the most
    frequent symbols, so the table is exact and deterministic (integer arithmetic only).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    target = 1 << precision_bits
    present = counts > 0
    if int(present.sum()) > target:
        raise ValueError("more distinct symbols than the frequency precision can represent")
    scaled = counts * target
    freqs = scaled // total
    rem = scaled - freqs * total
    short = target - int(freqs.sum())
    if short:
        order = np.lexsort((np.arange(counts.size), -rem))
        freqs[order[:short]] += 1
    freqs = np.where(present, np.maximum(freqs, 1), 0)
    excess = int(freqs.sum()) - target
    while excess > 0:  # take back from the largest, never below 1
        big = int(np.argmax(freqs))
        take = min(excess, int(freqs[big]) - 1)
        if take <= 0:
            raise ValueError("cannot normalize frequency table")  # unreachable given the check above
        freqs[big] -= take
        excess -= take
    return freqs


def _leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while True:
            byte = v & 0x7F
            v >>= 7
            if v:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)


def _read_leb128(data: bytes, pos: int, n: int) -> tuple[np.ndarray, int]:
    vals = np.zeros(n, dtype=np.int64)
    for i in range(n):
        v = 0
        shift = 0
        while True:
            if pos >= len(data):
                raise ContainerError("ANS frequency table is truncated")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift > 21:
                raise ContainerError("ANS frequency table holds an oversized value")
        vals[i] = v
    return vals, pos


def _best_table(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """The (frequencies, precision) minimizing table bytes + estimated code bytes."""
    present = counts > 0
    lowest = max(1, int(np.count_nonzero(present) - 1).bit_length())
    best: tuple[float, np.ndarray, int] | None = None
    for precision in range(lowest, PRECISION_BITS + 1):
        freqs = quantize_frequencies(counts, precision)
        code_bits = float(np.sum(counts[present] * (precision - np.log2(freqs[present]))))
        total = code_bits / 8 + len(_leb128(freqs))
        if best is None or total < best[0]:
            best = (total, freqs, precision)
    assert best is not None
    return best[1], best[2]


def _model(freqs: np.ndarray):
    return _constriction.stream.model.Categorical(freqs.astype(np.float64), perfect=False)


def encode(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """ANS-code ``symbols`` with a categorical model of their own (quantized) frequencies."""
    if _constriction is None:
        raise RuntimeError("the ANS coder needs the optional dependency 'constriction'")
    symbols = np.asarray(symbols).ravel()
    if symbols.size and int(symbols.max()) >= alphabet_size:
        raise ValueError("symbol outside the alphabet")
    if symbols.size == 0:
        return struct.pack("<BH", 1, 0) + _leb128(np.array([2]))
    counts = np.bincount(symbols, minlength=alphabet_size)
    nfreq = int(np.flatnonzero(counts)[-1]) + 1
    counts = counts[:nfreq]
    freqs, precision = _best_table(counts)
    header = struct.pack("<BH", precision, nfreq - 1) + _leb128(freqs)
    if int(np.count_nonzero(freqs)) == 1:
        return header
    coder = _constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(freqs))
    return header + coder.get_compressed().astype("<u4").tobytes()


def min_bits_per_symbol(freqs: np.ndarray, precision: int = PRECISION_BITS) -> float:
    """A lower bound on what any symbol costs under this table (used to cap declared counts).

    constriction re-quantizes to 24 bits and lends absent symbols a sliver of mass, so a present
    symbol's probability can only shrink; we allow a margin of 2**-12 relative to be safe.
    """
    pmax = min(1.0, float(freqs.max()) / (1 << precision) * (1 + 2.0**-12))
    return -float(np.log2(pmax)) if pmax < 1.0 else 0.0


def decode(payload: bytes, count: int, alphabet_size: int) -> np.ndarray:
    """Decode exactly ``count`` symbols; validates the table and the declared count first."""
    data = bytes(payload)
    if len(data) < 3:
        raise ContainerError("ANS payload is truncated")
    precision, nfreq_m1 = struct.unpack_from("<BH", data, 0)
    nfreq = nfreq_m1 + 1
    if not 1 <= precision <= PRECISION_BITS:
        raise ContainerError(f"ANS frequency precision {precision} is outside 1..{PRECISION_BITS}")
    if nfreq > alphabet_size:
        raise ContainerError("ANS frequency table is larger than the alphabet")
    freqs, pos = _read_leb128(data, 3, nfreq)
    if int(freqs.sum()) != 1 << precision:
        raise ContainerError("ANS frequency table does not sum to 2**precision")
    dtype = raw.symbol_dtype(alphabet_size)
    words = data[pos:]
    if np.count_nonzero(freqs) == 1:
        if words:
            raise ContainerError("one-symbol ANS payload has trailing bytes")
        return np.full(count, int(np.flatnonzero(freqs)[0]), dtype=dtype)
    if count == 0:
        if words:
            raise ContainerError("empty ANS stream has trailing bytes")
        return np.zeros(0, dtype=dtype)
    if len(words) % 4 or not words:
        raise ContainerError("ANS payload is not a whole number of 32-bit words")
    # Each symbol costs at least min_bits; the stack's state adds at most 64 bits.
    if count * min_bits_per_symbol(freqs, precision) > len(words) * 8 + 64:
        raise ContainerError(f"ANS payload of {len(words)} bytes cannot hold {count} symbols")
    if _constriction is None:
        raise ContainerError("this container uses ANS coding: install the optional dependency 'constriction'")
    try:
        coder = _constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
        out = coder.decode(_model(freqs), count)
    except Exception as exc:  # constriction raises its own types on malformed input
        raise ContainerError(f"ANS stream is corrupt ({exc})") from None
    if not coder.is_empty():
        raise ContainerError("ANS stream has data left after the declared symbol count")
    out = np.asarray(out)
    if out.size and (int(out.max()) >= nfreq or int(out.min()) < 0):
        raise ContainerError("ANS stream decoded a symbol outside its table")
    return out.astype(dtype)
