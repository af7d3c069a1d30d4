"""Argument types shared by the subcommands: argparse reports a bad value as a usage error (exit 2)
naming the flag, before any work starts."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["bounded_float", "non_negative_int", "positive_int"]


def bounded_float(lo: float, hi: float) -> Callable[[str], float]:
    """A number in ``[lo, hi]``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"must be between {lo:g} and {hi:g}, got {text}")
        return v

    return parse


def _int_at_least(lo: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


#: An integer >= 1.
positive_int = _int_at_least(1, "a positive integer")
#: An integer >= 0.
non_negative_int = _int_at_least(0, "an integer >= 0")
