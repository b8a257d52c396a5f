"""Mixture weights: the one parser and validator used by the CLI, the lmms-eval model and sweeps.

A mixture assigns each expert (one per data domain) a weight; under the ``linear`` merge the weights
are the proportions of a data mixture and must sum to 1. Users write them as lmms-eval and shell users
do: ``color=0.25,count=0.75``, ``color=0.25;count=0.75`` (inside lmms-eval's comma-split
``--model_args``) or positionally ``0.25;0.75``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from merge_proxy.errors import ConfigError

#: Methods the merge engine implements (see merge_proxy.engine).
METHODS: tuple[str, ...] = ("linear", "task_arithmetic")
SUM_TOLERANCE = 1e-6
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class Mixture:
    """Expert name -> weight, in the experts' order. Immutable, hashable, with a canonical key."""

    weights: tuple[tuple[str, float], ...]

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float]) -> Mixture:
        return cls(tuple((str(k), float(v)) for k, v in weights.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)

    def weight(self, name: str) -> float:
        return self.as_dict()[name]

    def key(self) -> str:
        """A stable text form (``a=0.25,b=0.75``), used in journals, cache keys and directory names."""
        return ",".join(f"{name}={_fmt(w)}" for name, w in self.weights)

    def __str__(self) -> str:
        return self.key()


def _fmt(weight: float) -> str:
    return f"{weight:.10g}"


def check_name(name: str, what: str = "expert name") -> str:
    """Names become keys in files and tags: keep them to letters, digits, '_', '-', '.'."""
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-' and '.' (e.g. 'ocr' or 'general_vqa')"
        )
    return name


def _split_items(text: str) -> list[str]:
    sep = ";" if ";" in text else ","
    return [item.strip() for item in text.split(sep) if item.strip()]


def _parse_float(raw: str, label: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"weight of {label} is {raw!r}, not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"weight of {label} is {raw!r}; weights must be finite numbers")
    return value


def parse_weights(text: str, names: Sequence[str] | None = None, *, what: str = "expert",
                  example: str = "ocr=0.25,general=0.75",
                  name_check: Callable[[str, str], str] = check_name) -> dict[str, float]:
    """Parse ``NAME=W`` items or positional ``W`` items separated by ``;`` (or ``,``).

    Positional weights need ``names`` (the experts in order). Only the syntax is checked here; use
    :func:`make_mixture` to check the weights against the experts and the method. ``what``,
    ``example`` and ``name_check`` serve other weighted things (the report's benchmark weights).
    """
    items = _split_items(text)
    if not items:
        raise ConfigError(f"no weights given; write them as NAME=W,NAME=W or NAME=W;NAME=W (e.g. {example})")
    named = ["=" in item for item in items]
    if all(named):
        weights: dict[str, float] = {}
        for item in items:
            name, raw = (part.strip() for part in item.split("=", 1))
            name_check(name, f"{what} name")
            if name in weights:
                raise ConfigError(f"weight for {what} {name!r} given twice in {text!r}; give it once")
            weights[name] = _parse_float(raw, f"{what} {name!r}")
        return weights
    if any(named):
        raise ConfigError(f"mix of named and positional weights in {text!r}; name all of them (e.g. {example})")
    if names is None:
        raise ConfigError(f"positional weights {text!r} need the {what}s' order; write NAME=W instead (e.g. {example})")
    if len(items) != len(names):
        raise ConfigError(
            f"{len(items)} weights for {len(names)} {what}s ({', '.join(names)}); give one weight per {what}"
        )
    return {name: _parse_float(raw, f"{what} {name!r}") for name, raw in zip(names, items)}


def make_mixture(
    weights: Mapping[str, float] | str, experts: Sequence[str], method: str = "linear"
) -> Mixture:
    """Validate weights against the experts and the merge method; return them in the experts' order."""
    if method not in METHODS:
        raise ConfigError(f"unknown merge method {method!r}; choose one of: {', '.join(METHODS)}")
    parsed = parse_weights(weights, experts) if isinstance(weights, str) else dict(weights)
    unknown = [n for n in parsed if n not in experts]
    if unknown:
        raise ConfigError(
            f"weights name unknown expert(s) {', '.join(map(repr, unknown))}; the experts are: {', '.join(experts)}"
        )
    missing = [n for n in experts if n not in parsed]
    if missing:
        raise ConfigError(
            f"no weight for expert(s) {', '.join(map(repr, missing))}; give every expert a weight (0 is allowed)"
        )
    for name, value in parsed.items():
        if not math.isfinite(float(value)):
            raise ConfigError(f"weight of expert {name!r} is {value}; weights must be finite numbers")
    negative = [n for n in experts if float(parsed[n]) < 0]
    if method == "linear" and negative:
        raise ConfigError(
            f"linear merge weights are a mixture's proportions and cannot be negative ({negative[0]!r} is "
            f"{parsed[negative[0]]}); use method task_arithmetic to extrapolate"
        )
    total = math.fsum(float(parsed[n]) for n in experts)
    if method == "linear" and abs(total - 1.0) > SUM_TOLERANCE:
        raise ConfigError(
            f"linear merge weights must sum to 1, these sum to {total:.10g}; rescale them, or use "
            "method task_arithmetic with a scale"
        )
    return Mixture(tuple((n, float(parsed[n])) for n in experts))
