"""Canonical, length-limited Huffman coding, vectorized in numpy (the paper's choice of coder).

Per-symbol Huffman APIs run at 1 to 9 MB/s (DESIGN-NOTES); this one never loops over symbols in
Python. The stream is split into ``lanes`` interleaved sub-streams (symbol ``i`` goes to lane
``i % lanes``), each coded contiguously. Decoding then advances all lanes at once: one table lookup
on a ``lmax``-bit window per step gives every lane's next symbol and code length, so the Python
loop runs ``ceil(count / lanes)`` times over arrays of ``lanes`` elements.

Payload layout (little-endian), self-describing apart from ``count`` and ``alphabet_size``:

    u8  lmax          longest code length (0: a single symbol, no bitstream)
    u16 nlen - 1      code lengths are given for symbols 0..nlen-1 (the rest have none)
    ...               nlen code lengths, 5 bits each, packed LSB first (raw.pack_bits, byte padded)
    if lmax == 0:     nothing more (every symbol is the one with length 0... i.e. symbol ``single``)
    u32 lanes
    u8  dbits         lane bit lengths are base + delta, each delta in dbits bits
    u64 base
    ...               lanes deltas, dbits bits each (omitted when dbits == 0), byte padded
    ...               the lanes' bitstreams, concatenated, each code stored bit-reversed so that its
                      first bit is the lowest; total length = sum of lane bit lengths, byte padded

Canonical codes: symbols sorted by (length, symbol) get consecutive code values, as in DEFLATE.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np

from onnxcompress.entropy import raw
from onnxcompress.errors import ContainerError

NAME = "huffman"
CODER_ID = 1

#: Longest code length we ever emit: tables hold 2**lmax entries of 4 bytes.
MAX_CODE_LENGTH = 16
#: Symbols per lane aimed at; the lane count is capped so that lane headers stay negligible.
_SYMBOLS_PER_LANE = 1024
_MAX_LANES = 16384


def _huffman_lengths(freqs: np.ndarray) -> np.ndarray:
    """Plain Huffman code lengths for the nonzero entries of ``freqs`` (0 for absent symbols)."""
    present = np.flatnonzero(freqs)
    lengths = np.zeros(freqs.size, dtype=np.int64)
    if present.size == 1:
        return lengths  # one symbol: zero bits each
    heap = [(int(freqs[s]), i, [int(s)]) for i, s in enumerate(present)]
    heapq.heapify(heap)
    tiebreak = len(heap)
    while len(heap) > 1:
        fa, _, a = heapq.heappop(heap)
        fb, _, b = heapq.heappop(heap)
        lengths[a] += 1
        lengths[b] += 1
        heapq.heappush(heap, (fa + fb, tiebreak, a + b))
        tiebreak += 1
    return lengths


def code_lengths(freqs: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code lengths limited to ``max_length`` bits.

    Limiting keeps decode tables at 2**max_length entries. When plain Huffman exceeds the limit we
    flatten the frequencies (halve, keeping every present symbol at least 1) and rebuild: simple and
    within a fraction of a percent of package-merge on the skewed streams we see.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    if np.count_nonzero(freqs) > (1 << max_length):
        raise ValueError("too many distinct symbols for the length limit")
    work = freqs.copy()
    while True:
        lengths = _huffman_lengths(work)
        if lengths.max(initial=0) <= max_length:
            return lengths
        work = np.where(freqs > 0, np.maximum(work >> 1, 1), 0)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values (MSB-first integers) for the given lengths (DEFLATE's assignment)."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    code = 0
    prev_len = 0
    for s in order:
        ln = int(lengths[s])
        if ln == 0:
            continue
        code <<= ln - prev_len
        codes[s] = code
        code += 1
        prev_len = ln
    return codes


def _reverse_bits(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse the low ``lengths[i]`` bits of each value (so the code's first bit is its LSB)."""
    out = np.zeros(values.size, dtype=np.uint64)
    v = values.astype(np.uint64)
    for b in range(int(lengths.max(initial=0))):
        bit = (v >> np.uint64(b)) & np.uint64(1)
        dest = (lengths.astype(np.int64) - 1 - b).clip(min=0).astype(np.uint64)
        out |= np.where(b < lengths, bit << dest, np.uint64(0))
    return out


def _check_kraft(lengths: np.ndarray) -> None:
    used = lengths[lengths > 0]
    if used.size >= 2 and float(np.sum(np.ldexp(1.0, -used))) > 1.0 + 1e-12:
        raise ContainerError("Huffman code lengths violate the Kraft inequality")
    if used.size == 1:
        raise ContainerError("Huffman code lengths describe a one-symbol code with a nonzero length")


def _lane_count(count: int) -> int:
    return max(1, min(_MAX_LANES, count // _SYMBOLS_PER_LANE))


def encode(symbols: np.ndarray, alphabet_size: int) -> bytes:
    """Huffman-code ``symbols`` (values < alphabet_size <= 65536) into a self-describing payload."""
    symbols = np.asarray(symbols).ravel()
    count = symbols.size
    if count and int(symbols.max()) >= alphabet_size:
        raise ValueError("symbol outside the alphabet")
    if count == 0:
        return struct.pack("<BH", 0, 0) + raw.pack_bits(np.zeros(1, np.int64), 5, pad_to_8_codes=False)
    freqs = np.bincount(symbols, minlength=alphabet_size)
    nlen = int(np.flatnonzero(freqs)[-1]) + 1
    lengths = code_lengths(freqs[:nlen])
    lmax = int(lengths.max())
    if lmax == 0:  # one distinct symbol: give it "length 1" in the table only to name it
        table = np.zeros(nlen, dtype=np.int64)
        table[nlen - 1] = 1
        return struct.pack("<BH", 0, nlen - 1) + raw.pack_bits(table, 5, pad_to_8_codes=False)
    header = struct.pack("<BH", lmax, nlen - 1) + raw.pack_bits(lengths, 5, pad_to_8_codes=False)
    rcodes = _reverse_bits(canonical_codes(lengths), lengths)

    lanes = _lane_count(count)
    steps = -(-count // lanes)
    padded = np.full(steps * lanes, int(np.argmax(freqs)), dtype=symbols.dtype)
    padded[:count] = symbols
    # Lane-major order: lane j's symbols are i = j, j + lanes, ...; the lanes' bitstreams are
    # concatenated, so the whole payload is one plain Huffman stream of this permuted sequence.
    lane_major = padded.reshape(steps, lanes).T.copy()
    len_tab = lengths.astype(np.uint8)
    lane_bits = len_tab[lane_major].sum(axis=1, dtype=np.int64)
    base = int(lane_bits.min())
    deltas = lane_bits - base
    dbits = int(deltas.max()).bit_length()
    if dbits <= 16:
        lane_hdr = struct.pack("<IBQ", lanes, dbits, base)
        if dbits:
            lane_hdr += raw.pack_bits(deltas, dbits, pad_to_8_codes=False)
    else:
        lane_hdr = struct.pack("<IBQ", lanes, 64, 0) + lane_bits.astype("<u8").tobytes()
    lane_start = np.concatenate(([0], np.cumsum(lane_bits)))
    total_bits = int(lane_start[-1])
    words = np.zeros(total_bits // 64 + 2, dtype=np.uint64)

    band = max(1, (1 << 22) // steps)  # lanes per band: bounded temporaries
    for j0 in range(0, lanes, band):
        j1 = min(lanes, j0 + band)
        sub = lane_major[j0:j1].ravel()
        ln = len_tab[sub]
        off = np.cumsum(ln, dtype=np.int64)
        off -= ln
        off += lane_start[j0]
        code = rcodes[sub]
        w = off >> 6
        sh = (off & 63).astype(np.uint64)
        lo = code << sh
        starts = np.flatnonzero(np.diff(w, prepend=-1))
        words[w[starts]] |= np.bitwise_or.reduceat(lo, starts)
        spill = (off & 63) + ln > 64
        if spill.any():
            words[w[spill] + 1] |= code[spill] >> (np.uint64(64) - sh[spill])
    stream = words.astype("<u8").view(np.uint8)[: -(-total_bits // 8)]
    return header + lane_hdr + stream.tobytes()


class _Reader:
    """Bounds-checked cursor over an untrusted payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ContainerError("Huffman payload is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def decode(payload: bytes, count: int, alphabet_size: int) -> np.ndarray:
    """Decode exactly ``count`` symbols; any inconsistency raises ContainerError (never hangs)."""
    dtype = raw.symbol_dtype(alphabet_size)
    rd = _Reader(bytes(payload))
    lmax, nlen_m1 = rd.unpack("<BH")
    nlen = nlen_m1 + 1
    if nlen > alphabet_size or lmax > MAX_CODE_LENGTH:
        raise ContainerError("Huffman header names symbols outside the alphabet or too long codes")
    lengths = raw.unpack_bits(
        rd.take(raw.packed_size(nlen, 5, pad_to_8_codes=False)), nlen, 5, pad_to_8_codes=False
    ).astype(np.int64)
    if lmax == 0:
        if rd.pos != len(rd.data):
            raise ContainerError("Huffman payload has trailing bytes")
        if count == 0:
            return np.zeros(0, dtype=dtype)
        if int(lengths.sum()) != 1 or int(lengths.max()) != 1:
            raise ContainerError("one-symbol Huffman payload does not name exactly one symbol")
        return np.full(count, int(np.argmax(lengths)), dtype=dtype)
    if int(lengths.max()) != lmax:
        raise ContainerError("Huffman code lengths disagree with the declared maximum")
    _check_kraft(lengths)
    if count == 0:
        raise ContainerError("Huffman payload with codes declares no symbols")
    lanes, dbits, base = rd.unpack("<IBQ")
    if lanes < 1 or lanes > max(1, count):
        raise ContainerError(f"Huffman payload declares {lanes} lanes for {count} symbols")
    steps = -(-count // lanes)
    if dbits == 64:
        lane_bits = np.frombuffer(rd.take(8 * lanes), dtype="<u8").astype(np.int64)
    elif dbits <= 16:
        lane_bits = np.full(lanes, base, dtype=np.int64)
        if dbits:
            lane_bits += raw.unpack_bits(
                rd.take(raw.packed_size(lanes, dbits, pad_to_8_codes=False)),
                lanes,
                dbits,
                pad_to_8_codes=False,
            ).astype(np.int64)
    else:
        raise ContainerError("Huffman lane header is malformed")
    lmin = int(lengths[lengths > 0].min())
    if (lane_bits < 0).any() or (lane_bits < steps * lmin).any() or (lane_bits > steps * lmax).any():
        raise ContainerError("Huffman lane lengths cannot hold the declared symbol count")
    total_bits = int(lane_bits.sum())
    stream = rd.take(-(-total_bits // 8))
    if rd.pos != len(rd.data):
        raise ContainerError("Huffman payload has trailing bytes")

    # Decode table: entry = symbol | length << 16, indexed by the next lmax bits (LSB first).
    rcodes = _reverse_bits(canonical_codes(lengths), lengths).astype(np.int64)
    table = np.zeros(1 << lmax, dtype=np.uint32)
    for s in np.flatnonzero(lengths):
        ln = int(lengths[s])
        idx = np.arange(int(rcodes[s]), 1 << lmax, 1 << ln)
        table[idx] = np.uint32(int(s) | (ln << 16))

    # A contiguous uint32 starting at every byte: one gather reads a whole lmax-bit window
    # (np.take on this is ~3x faster than fancy indexing a strided view). Costs 4 bytes per
    # stream byte while decoding.
    nbytes = len(stream)
    buf = np.zeros(nbytes + 8, dtype=np.uint32)
    buf[:nbytes] = np.frombuffer(stream, dtype=np.uint8)
    window = (
        buf[: nbytes + 1]
        | (buf[1 : nbytes + 2] << 8)
        | (buf[2 : nbytes + 3] << 16)
        | (buf[3 : nbytes + 4] << 24)
    )
    del buf
    pdt = np.uint32 if total_bits < (1 << 32) - 64 else np.uint64
    pos = np.concatenate(([0], np.cumsum(lane_bits)[:-1])).astype(pdt)
    end = pos + lane_bits.astype(pdt)
    out = np.empty((steps, lanes), dtype=dtype)
    mask = pdt((1 << lmax) - 1)
    byte_idx = np.empty(lanes, dtype=pdt)
    shift = np.empty(lanes, dtype=pdt)
    win = np.empty(lanes, dtype=np.uint32)
    ent = np.empty(lanes, dtype=np.uint32)
    for t in range(steps):
        np.right_shift(pos, 3, out=byte_idx)
        np.bitwise_and(pos, 7, out=shift)
        np.take(window, byte_idx, out=win, mode="clip")
        np.right_shift(win, shift, out=win, casting="unsafe")
        np.bitwise_and(win, mask, out=win, casting="unsafe")
        np.take(table, win, out=ent)
        out[t] = ent  # low 16 bits are the symbol (truncating cast)
        np.right_shift(ent, 16, out=ent)
        np.add(pos, ent, out=pos, casting="unsafe")
        if t & 127 == 127 and (pos > end).any():
            raise ContainerError("Huffman lane overran its bitstream")
    if not np.array_equal(pos, end):
        raise ContainerError("Huffman lanes did not end where their lengths say")
    result = out.ravel()[:count]
    if result.size and int(result.max()) >= alphabet_size:
        raise ContainerError("Huffman stream decoded a symbol outside its alphabet")
    return result
