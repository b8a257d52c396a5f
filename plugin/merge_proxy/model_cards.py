"""What the Hub reads from the model cards merge-proxy writes (experts, merged models): the task a
model's files imply, the base a merge descends from, and the license a derivative inherits.

The Hub files models by ``pipeline_tag`` and draws the model tree from ``base_model``; an adapter
repo has no config.json to infer a task from, and a merge made from a local copy of the base knows
no Hub id unless its experts recorded one. Fine-tunes and merges of Qwen2-VL or InternVL are bound
by their base's license, so a card without one would misstate what users may do with them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from merge_proxy.hub import looks_like_repo_id

if TYPE_CHECKING:
    from merge_proxy.expert_metadata import BaseModelRef
    from merge_proxy.experts import ResolvedModel
    from merge_proxy.hub import HubOptions

logger = logging.getLogger(__name__)

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


#: The card fields that state a license (``license_name`` and ``license_link`` go with ``other``).
LICENSE_FIELDS = ("license", "license_name", "license_link")


def card_license(model_dir: str | Path) -> dict[str, str]:
    """The license fields of the model card (README.md) in ``model_dir``; empty when it states none."""
    readme = Path(model_dir) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception as err:  # noqa: BLE001 - a card we cannot parse states no license we can copy
        logger.warning("could not read the license of %s (%s)", readme, err)
        return {}
    return _license_fields(data)


def base_license(base: BaseModelRef, hub: HubOptions) -> dict[str, str]:
    """The license of the base an expert was trained from: its local card when training loaded it
    from a directory that has one, else its Hub card (one request); empty, with a warning, when
    neither says (an offline node, a private base)."""
    from huggingface_hub.constants import HF_HUB_OFFLINE

    from merge_proxy.hub import is_commit_sha

    if base.path and Path(base.path).is_dir() and (Path(base.path) / "README.md").is_file():
        return card_license(base.path)
    if not base.id or HF_HUB_OFFLINE:
        return {}
    try:
        revision = base.revision if is_commit_sha(base.revision) else None
        info = hub.api().model_info(base.id, revision=revision)
    except Exception as err:  # noqa: BLE001 - the expert is still publishable; say what is missing
        first_line = str(err).splitlines()[0] if str(err) else ""
        logger.warning("could not read the license of %s from the Hub (%s: %s); the card states none: "
                       "set expert: license: (or --license)", base.id, type(err).__name__, first_line[:200])
        return {}
    return _license_fields(info.card_data.to_dict() if info.card_data else {})


def _license_fields(data: dict) -> dict[str, str]:
    return {key: str(data[key]) for key in LICENSE_FIELDS if data.get(key)}
