"""What the Hub reads from the model cards merge-proxy writes (experts, merged models): the task a
model's files imply and the base a merge descends from.

The Hub files models by ``pipeline_tag`` and draws the model tree from ``base_model``; an adapter
repo has no config.json to infer a task from, and a merge made from a local copy of the base knows
no Hub id unless its experts recorded one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from merge_proxy.hub import looks_like_repo_id

if TYPE_CHECKING:
    from merge_proxy.experts import ResolvedModel

VISION_PIPELINE = "image-text-to-text"
TEXT_PIPELINE = "text-generation"

#: Files transformers and LLaMA-Factory save beside a model that takes images or video.
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def pipeline_tag(model_dir: str | Path) -> str:
    """``image-text-to-text`` for a model with a vision tower (its config) or an image processor (what
    LLaMA-Factory saves beside an adapter), ``text-generation`` otherwise."""
    model_dir = Path(model_dir)
    if any((model_dir / name).is_file() for name in _PROCESSOR_FILES):
        return VISION_PIPELINE
    config = model_dir / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError):
        data = {}
    return VISION_PIPELINE if isinstance(data, dict) and "vision_config" in data else TEXT_PIPELINE


def hub_base_id(base: ResolvedModel, experts: Sequence[ResolvedModel]) -> str | None:
    """The base's Hub id: its repo when it came from the Hub, else the one id every expert that names
    one records in its expert.json (a local copy of a published base), else None."""
    if base.repo_id:
        return base.repo_id
    declared = {e.metadata.base_model.id for e in experts if e.metadata and e.metadata.base_model.id}
    if len(declared) == 1:
        [only] = declared
        return only if looks_like_repo_id(only) else None
    return None
