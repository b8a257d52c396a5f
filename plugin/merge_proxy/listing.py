"""Naming many things in one line: a sweep has thousands of mixtures.

A log line, an error or a report sentence that listed every mixture id would run to hundreds of
kilobytes for a Dirichlet sweep; these name the first few and count the rest, and say where the full
list is (analysis.json, ranking.csv).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: How many names a log line or a report sentence spells out before counting the rest.
NAMED = 10


def head(items: Iterable[T], limit: int = NAMED) -> tuple[list[T], int]:
    """The items to name and how many more to count: all of them when at most one would be left
    over (never "and 1 more": the one would take the place of the words)."""
    items = list(items)
    if len(items) <= limit + 1:
        return items, 0
    return items[:limit], len(items) - limit


def some(items: Sequence[str], limit: int = NAMED, fmt: Callable[[str], str] = str) -> str:
    """``a, b, c`` for a short list, ``a, b, ... and 4990 more`` for a long one."""
    named, more = head(items, limit)
    text = ", ".join(fmt(i) for i in named)
    return f"{text} and {more} more" if more else text
