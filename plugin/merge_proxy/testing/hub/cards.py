"""README front matter: the metadata the Hub indexes, and the tags it derives from it.

The Hub reads the YAML block at the top of ``README.md`` when a commit lands, stores it as
``cardData`` and turns some of its fields into search tags (``license:mit``, ``dataset:org/x``,
``base_model:adapter:org/y``...). Code that publishes models relies on finding them again through
those tags, so the emulator derives them the same way, and refuses a README whose front matter does
not parse, as the Hub does, so that a broken card fails in tests rather than on the real Hub.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from merge_proxy.testing.hub.errors import BadRequest

#: Relations a model card may declare to its ``base_model`` (Hub vocabulary).
BASE_MODEL_RELATIONS: frozenset[str] = frozenset({"adapter", "merge", "quantized", "finetune"})

#: Dataset card fields the Hub turns into ``<field>:<value>`` tags.
_DATASET_TAG_FIELDS: tuple[str, ...] = (
    "task_categories",
    "task_ids",
    "language",
    "multilinguality",
    "size_categories",
    "source_datasets",
    "annotations_creators",
    "language_creators",
    "license",
)

#: Fields that must be a string or a list of strings, per repo type.
_STRING_OR_LIST_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("tags", "language", "datasets", "base_model", "license"),
    "dataset": ("tags", *_DATASET_TAG_FIELDS, "pretty_name"),
}
_STRING_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("library_name", "pipeline_tag", "base_model_relation", "license_name", "license_link"),
    "dataset": ("license_name", "license_link"),
}

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_FENCE = re.compile(r"^---[ \t]*$")


class InvalidCard(BadRequest):
    """README.md front matter the Hub would reject; the message says which field and why."""


def split_front_matter(text: str) -> str | None:
    """The YAML text between the leading ``---`` fences, or None when the README has none.

    Raises InvalidCard when a block is opened but never closed: the Hub would otherwise index the
    whole README as YAML, and the author almost certainly forgot the closing fence.
    """
    lines = text.splitlines()
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start == len(lines) or not _FENCE.match(lines[start]):
        return None
    for end in range(start + 1, len(lines)):
        if _FENCE.match(lines[end]):
            return "\n".join(lines[start + 1 : end])
    raise InvalidCard(
        "Invalid metadata in README.md: the YAML front matter opened by '---' on the first line "
        "is never closed; add a line containing only '---' after the metadata."
    )


def parse_card(text: str, repo_type: str) -> dict[str, Any] | None:
    """The validated ``cardData`` of a README, or None when it has no front matter.

    Values are round-tripped through JSON (dates become strings) because the Hub serves cardData
    as JSON and the emulator stores it in JSON commit manifests.
    """
    block = split_front_matter(text)
    if block is None:
        return None
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as err:
        raise InvalidCard(
            f"Invalid metadata in README.md: the YAML front matter does not parse: {err}"
        ) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidCard(
            "Invalid metadata in README.md: the YAML front matter must be a mapping of keys to values, "
            f"got a {type(data).__name__}."
        )
    _validate_fields(data, repo_type)
    card: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return card


def _validate_fields(data: Mapping[str, Any], repo_type: str) -> None:
    """Type checks for the fields the Hub indexes; a wrong type there breaks search on the Hub."""
    for key in _STRING_OR_LIST_FIELDS.get(repo_type, ()):
        if key in data and data[key] is not None:
            _as_string_list(data[key], key)
    for key in _STRING_FIELDS.get(repo_type, ()):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise InvalidCard(f"Invalid metadata in README.md: '{key}' must be a string, got {data[key]!r}.")
    if repo_type != "model":
        return
    for base in _as_string_list(data.get("base_model"), "base_model"):
        if not _REPO_ID.match(base):
            raise InvalidCard(
                f"Invalid metadata in README.md: base_model '{base}' is not a model id like 'org/name'."
            )
    relation = data.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        raise InvalidCard(
            f"Invalid metadata in README.md: base_model_relation '{relation}' must be one of "
            f"{', '.join(sorted(BASE_MODEL_RELATIONS))}."
        )


def _as_string_list(value: Any, key: str) -> list[str]:
    """Cards may write a single value or a list; both mean the same to the Hub."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidCard(
        f"Invalid metadata in README.md: '{key}' must be a string or a list of strings, got {value!r}."
    )


def derive_tags(card: Mapping[str, Any] | None, repo_type: str, paths: Iterable[str]) -> list[str]:
    """The tags the Hub lists for a repo whose README carries ``card`` and whose files are ``paths``."""
    if not card:
        return []
    if repo_type == "dataset":
        tags = _as_string_list(card.get("tags"), "tags")
        for key in _DATASET_TAG_FIELDS:
            tags += [f"{key}:{value}" for value in _as_string_list(card.get(key), key)]
        return _unique(tags)
    return _unique(_model_tags(card, set(paths)))


def _model_tags(card: Mapping[str, Any], paths: set[str]) -> list[str]:
    tags: list[str] = []
    if card.get("library_name"):
        tags.append(card["library_name"])
    tags += _as_string_list(card.get("tags"), "tags")
    if card.get("pipeline_tag"):
        tags.append(card["pipeline_tag"])
    tags += _as_string_list(card.get("language"), "language")
    tags += [f"dataset:{name}" for name in _as_string_list(card.get("datasets"), "datasets")]
    bases = _as_string_list(card.get("base_model"), "base_model")
    relation = infer_base_model_relation(card, bases, paths)
    tags += [f"base_model:{base}" for base in bases]
    if relation is not None:
        tags += [f"base_model:{relation}:{base}" for base in bases]
    tags += [f"license:{name}" for name in _as_string_list(card.get("license"), "license")]
    return tags


def infer_base_model_relation(card: Mapping[str, Any], bases: list[str], paths: set[str]) -> str | None:
    """The declared relation, else the one the Hub infers: adapter, merge, quantized or finetune."""
    if not bases:
        return None
    declared = card.get("base_model_relation")
    if declared:
        return str(declared)
    if "adapter_config.json" in paths:
        return "adapter"
    if len(bases) > 1:
        return "merge"
    if any(path.endswith(".gguf") for path in paths):
        return "quantized"
    return "finetune"


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))
