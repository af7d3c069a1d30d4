"""Progress reporting for long work, as data: the library calls a :data:`ProgressCallback`; it never
draws anything. ``onnxcompress.commands.display.terminal_progress`` is the one display (rich when
installed and stderr is a terminal, else a plain line) and is what the CLI passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TypeVar

__all__ = ["ProgressCallback", "track"]

T = TypeVar("T")

#: ``progress(task, done, total)``: ``done`` of ``total`` units of ``task`` are finished (called
#: with ``done == 0`` when a task starts, and with ``done == total`` when it ends).
ProgressCallback = Callable[[str, int, int], None]


def track(items: Iterable[T], task: str, progress: ProgressCallback | None) -> Iterator[T]:
    """Yield ``items``, reporting each one as done once the caller has finished with it."""
    if not progress:
        yield from items
        return
    seq = items if isinstance(items, Sized) else list(items)
    total = len(seq)
    progress(task, 0, total)
    for i, item in enumerate(seq, 1):
        yield item
        progress(task, i, total)
