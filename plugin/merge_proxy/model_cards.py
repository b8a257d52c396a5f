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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from merge_proxy.errors import describe_error
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


def pipeline_tag(model_dir: str | Path) -> str | None:
    """``image-text-to-text`` for a model with a vision tower (its config) or an image processor (what
    LLaMA-Factory saves beside an adapter of a VLM), ``text-generation`` for a config without one;
    None when the folder says neither (an adapter saved without its processor: ask its base)."""
    model_dir = Path(model_dir)
    if any((model_dir / name).is_file() for name in _PROCESSOR_FILES):
        return VISION_PIPELINE
    config = model_dir / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
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


@dataclass(frozen=True)
class BaseCard:
    """What an expert's card takes from its base's: the license, and the task when the expert's own
    files do not say it."""

    license: dict[str, str] = field(default_factory=dict)
    pipeline_tag: str | None = None


def card_license(model_dir: str | Path, repo_id: str | None = None, revision: str | None = None,
                 endpoint: str | None = None) -> dict[str, str]:
    """The license fields of the model card (README.md) in ``model_dir``; empty when it states none.
    A relative ``license_link`` (``LICENSE``, a file of the base's repo) is made a link into
    ``repo_id`` on the Hub, or dropped when the base has no Hub id: copied as is it would point at
    a file the derived repo does not have."""
    readme = Path(model_dir) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception as err:  # noqa: BLE001 - a card we cannot parse states no license we can copy
        logger.warning("could not read the license of %s (%s)", readme, err)
        return {}
    return _license_fields(data, repo_id, revision, endpoint)


def base_card(base: BaseModelRef, hub: HubOptions) -> BaseCard:
    """The license and task of the base an expert was trained from: from its local folder when
    training loaded it from one, else (or for what that folder's card does not state) from its Hub
    card, one request; what neither says stays empty, with a warning (an offline node, a private
    base): the expert is published all the same."""
    from huggingface_hub.constants import HF_HUB_OFFLINE

    from merge_proxy.hub import is_commit_sha

    revision = base.revision if is_commit_sha(base.revision) else None
    local = Path(base.path) if base.path and (Path(base.path) / "config.json").is_file() else None
    found = BaseCard(card_license(local, base.id, revision, hub.endpoint) if local else {},
                     pipeline_tag(local) if local else None)
    if (found.license and found.pipeline_tag) or not base.id:
        return found
    if HF_HUB_OFFLINE:
        logger.warning("HF_HUB_OFFLINE: the license of %s is not read from the Hub; the card states %s: set "
                       "expert: license: (or --license)", base.id, found.license.get("license", "none"))
        return found
    try:
        info = hub.api().model_info(base.id, revision=revision)
    except Exception as err:  # noqa: BLE001 - the expert is still publishable; say what is missing
        logger.warning("could not read the card of %s from the Hub (%s); the expert's card states no "
                       "license: set expert: license: (or --license)", base.id, describe_error(err))
        return found
    card = info.card_data.to_dict() if info.card_data else {}
    return BaseCard(found.license or _license_fields(card, base.id, revision, hub.endpoint),
                    found.pipeline_tag or info.pipeline_tag)


def _license_fields(data: dict, repo_id: str | None, revision: str | None, endpoint: str | None) -> dict[str, str]:
    fields_ = {key: str(data[key]) for key in LICENSE_FIELDS if data.get(key)}
    link = fields_.get("license_link")
    if link and "://" not in link:
        if repo_id:
            from huggingface_hub.constants import ENDPOINT

            fields_["license_link"] = f"{(endpoint or ENDPOINT).rstrip('/')}/{repo_id}/blob/{revision or 'main'}/" \
                                      f"{link.removeprefix('./').lstrip('/')}"
        else:
            del fields_["license_link"]
    return fields_
