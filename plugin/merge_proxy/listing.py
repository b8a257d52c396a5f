"""Naming many things in one line: a sweep has thousands of mixtures.

A log line, an error or a report sentence that listed every mixture id would run to hundreds of
kilobytes for a Dirichlet sweep; these name the first few and count the rest, and say where the full
list is (analysis.json, ranking.csv).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: How many names a log line or a report sentence spells out before counting the rest.
NAMED = 10


def some(items: Sequence[str], limit: int = NAMED, fmt: Callable[[str], str] = str) -> str:
    """``a, b, c`` for a short list, ``a, b, ... and 4990 more`` for a long one (never "and 1 more":
    the one would take the place of the words)."""
    if len(items) <= limit + 1:
        return ", ".join(fmt(i) for i in items)
    return f"{', '.join(fmt(i) for i in items[:limit])} and {len(items) - limit} more"
