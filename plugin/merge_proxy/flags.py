"""Yes/no settings written as text (lmms-eval model_args, quoted YAML): one reading everywhere.

``bool("false")`` is True, so a quoted ``push: "false"`` or ``base_check=flase`` read naively would do
the opposite of what was written; words outside the two lists are refused by the caller, which names
the setting and the fix.
"""

from __future__ import annotations

from typing import Any

TRUE: tuple[str, ...] = ("1", "true", "yes", "on")
FALSE: tuple[str, ...] = ("0", "false", "no", "off")


def parse_flag(value: Any, default: bool) -> bool | None:
    """``value`` as a bool: YAML's booleans, the words of :data:`TRUE` / :data:`FALSE` (any case,
    spaces around), ``default`` when absent (None); None for anything else."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    return None
