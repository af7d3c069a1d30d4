"""The one progress display of the command line: renders the library's progress callbacks
(:data:`onnxcompress.progress.ProgressCallback`) on stderr, with rich when it is installed and a
plain updating line otherwise, and only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onnxcompress.progress import ProgressCallback

__all__ = ["TerminalProgress", "terminal_progress"]


class TerminalProgress:
    """A :data:`ProgressCallback` that draws one bar (or line) per task; :meth:`close` clears it."""

    def __init__(self) -> None:
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._last = 0.0
        try:
            from rich.progress import Progress
        except ImportError:  # plain fallback: one updating line
            return
        self._rich = Progress(transient=True)

    def __call__(self, task: str, done: int, total: int) -> None:
        if self._rich is not None:
            if task not in self._tasks:
                if not self._tasks:
                    self._rich.start()
                self._tasks[task] = self._rich.add_task(task, total=total)
            self._rich.update(self._tasks[task], completed=done, total=total)
            return
        now = time.monotonic()
        if done >= total or now - self._last > 0.2:
            self._last = now
            end = "\n" if done >= total else ""
            print(f"\r{task}: {done}/{total}\033[K", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None and self._tasks:
            self._rich.stop()
            self._tasks.clear()


@contextmanager
def terminal_progress(enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """The display for one command, or None (no progress) when disabled or stderr is no terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    display = TerminalProgress()
    try:
        yield display
    finally:
        display.close()
