"""Entropy coders for symbol streams (pure numpy; ``constriction`` optional; never imports onnx).

Every coder module exposes ``NAME``, ``CODER_ID``, ``encode(symbols, alphabet_size) -> bytes`` (a
self-describing payload: its model/frequency table travels inside) and
``decode(payload, count, alphabet_size) -> np.ndarray`` (exact; uint8 for alphabets up to 256,
else uint16; raises :class:`onnxcompress.errors.ContainerError` on malformed input). The container
stores the coder id next to each payload, so ids are part of the file format: never renumber.

``choose_best`` codes a stream with every available coder and keeps the smallest payload: small or
near-uniform streams end up raw, skewed ones ANS (or Huffman when constriction is missing).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from onnxcompress.entropy import ans, huffman, raw

__all__ = [
    "CODERS",
    "CODER_NAMES",
    "available_coders",
    "choose_best",
    "decode",
    "encode",
    "get_coder",
    "order0_entropy",
]

#: Coder modules by file-format id.
CODERS: dict[int, ModuleType] = {raw.CODER_ID: raw, huffman.CODER_ID: huffman, ans.CODER_ID: ans}
#: Coder ids by name.
CODER_NAMES: dict[str, int] = {m.NAME: i for i, m in CODERS.items()}


def available_coders() -> list[str]:
    """Names of the coders usable here (``ans`` only when constriction is installed)."""
    return [m.NAME for m in CODERS.values() if m is not ans or ans.available()]


def get_coder(name_or_id: str | int) -> ModuleType:
    """The coder module for a name (``raw``, ``huffman``, ``ans``) or a file-format id."""
    if isinstance(name_or_id, str):
        if name_or_id not in CODER_NAMES:
            raise ValueError(f"unknown coder {name_or_id!r}; choose one of {sorted(CODER_NAMES)}")
        return CODERS[CODER_NAMES[name_or_id]]
    if name_or_id not in CODERS:
        raise ValueError(f"unknown coder id {name_or_id}")
    return CODERS[name_or_id]


def _check(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    symbols = np.asarray(symbols).ravel()
    if symbols.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"symbols must be uint8 or uint16, got {symbols.dtype}")
    if not 1 <= alphabet_size <= 65536:
        raise ValueError(f"alphabet_size must be in 1..65536, got {alphabet_size}")
    if symbols.size and int(symbols.max()) >= alphabet_size:
        raise ValueError("a symbol is outside the alphabet")
    return symbols


def encode(symbols: np.ndarray, alphabet_size: int, coder: str | int = "ans") -> bytes:
    """Encode with one named coder (validated input)."""
    return get_coder(coder).encode(_check(symbols, alphabet_size), alphabet_size)


def decode(payload: bytes, count: int, alphabet_size: int, coder: str | int) -> np.ndarray:
    """Decode with one coder; the caller must have bounded ``count`` already."""
    return get_coder(coder).decode(payload, count, alphabet_size)


def choose_best(
    symbols: np.ndarray, alphabet_size: int, coders: list[str] | None = None
) -> tuple[str, bytes]:
    """Encode with each candidate coder and return ``(name, payload)`` of the smallest payload.

    ``coders`` defaults to :func:`available_coders`. Ties go to the earlier (faster to decode)
    coder in the order raw, huffman, ans. Size is the only criterion: ANS decodes about half as
    fast as the vectorized Huffman (benchmarks/entropy_coders.py) but is never larger by more
    than its table, and usually smaller by 0.5-2%.
    """
    symbols = _check(symbols, alphabet_size)
    names = list(coders) if coders is not None else available_coders()
    best: tuple[str, bytes] | None = None
    for name in names:
        if name == "ans" and not ans.available():
            continue
        payload = get_coder(name).encode(symbols, alphabet_size)
        if best is None or len(payload) < len(best[1]):
            best = (name, payload)
    if best is None:
        raise ValueError("no usable coder among " + ", ".join(names))
    return best


def order0_entropy(symbols: np.ndarray, alphabet_size: int | None = None) -> float:
    """Order-0 (memoryless) empirical entropy in bits per symbol; 0.0 for an empty stream."""
    symbols = np.asarray(symbols).ravel()
    if symbols.size == 0:
        return 0.0
    counts = np.bincount(symbols, minlength=alphabet_size or 0)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())
