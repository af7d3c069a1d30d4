"""Progress display for long work: rich when installed and stderr is a terminal, else quiet.

Kept deliberately tiny so that library code can always call it; the CLI decides whether to show it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(
    items: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True
) -> Iterator[T]:
    if not enabled or not sys.stderr.isatty():
        yield from items
        return
    try:
        from rich.progress import Progress
    except ImportError:  # plain fallback: one updating line
        items = list(items)
        for i, item in enumerate(items, 1):
            print(f"\r{description}: {i}/{len(items)}", end="", file=sys.stderr, flush=True)
            yield item
        print(file=sys.stderr)
        return
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=total if total is not None else len(items))  # type: ignore[arg-type]
        for item in items:
            yield item
            progress.advance(task)
