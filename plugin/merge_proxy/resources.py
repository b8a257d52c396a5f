"""Access to the recipes and Hub card templates shipped inside the package.

They live at the repository's top level (recipes/, hub_cards/) and are installed as the packages
``merge_proxy.recipes`` and ``merge_proxy.hub_cards``; going through importlib.resources finds them in
an editable checkout, a wheel install and a zipped install alike.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from merge_proxy.errors import ResourceError

_RECIPES = "merge_proxy.recipes"
_CARDS = "merge_proxy.hub_cards"


def _list(package: str, suffix: str) -> list[str]:
    root = resources.files(package)
    return sorted(p.name[: -len(suffix)] for p in root.iterdir() if p.name.endswith(suffix))


def _get(package: str, name: str, suffix: str, kind: str) -> Traversable:
    path = resources.files(package) / f"{name}{suffix}"
    if not path.is_file():
        known = ", ".join(_list(package, suffix)) or "none"
        raise ResourceError(f"no shipped {kind} named {name!r}; the package ships: {known}")
    return path


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package (without the .yaml suffix)."""
    return _list(_RECIPES, ".yaml")


def recipe_path(name: str) -> Traversable:
    """The shipped recipe ``name`` (e.g. ``demo``), as a readable resource."""
    return _get(_RECIPES, name, ".yaml", "recipe")


def list_card_templates() -> list[str]:
    """Names of the Hub card templates shipped with the package (without the .md.j2 suffix)."""
    return _list(_CARDS, ".md.j2")


def card_template(name: str) -> str:
    """The text of the Jinja template for the Hub card ``name`` (e.g. ``expert``)."""
    return _get(_CARDS, name, ".md.j2", "card template").read_text(encoding="utf-8")


def paper_mixtures() -> dict:
    """The reference protocol's mixtures (paper_mixtures.json, shipped with the recipes)."""
    import json

    path = resources.files(_RECIPES) / "paper_mixtures.json"
    return json.loads(path.read_text(encoding="utf-8"))
