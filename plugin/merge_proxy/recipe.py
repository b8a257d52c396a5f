"""Sweep recipes: YAML that says which base, experts, mixtures and benchmarks to score.

Validated before anything runs, with errors that name the file, the line and the key, since a recipe
typo found after an hour of scoring (or after a SLURM queue wait) costs the most. Relative paths are
relative to the recipe file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merge_proxy.errors import ConfigError
from merge_proxy.mixture import METHODS, check_name

TOP_KEYS = ("name", "base", "experts", "mixtures", "benchmarks", "include_path", "backend", "backend_args",
            "method", "scale", "aggregate", "output_dir", "mode", "truth", "executor")
EXECUTOR_KEYS = ("type", "shards", "partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                 "array_parallelism", "account", "qos")


@dataclass(frozen=True)
class Benchmark:
    task: str
    weight: float = 1.0
    metric: str | None = None
    """Metric to rank on (lmms-eval's name without the filter); default: the task's first metric."""
    limit: int | float | None = None


@dataclass(frozen=True)
class TruthModel:
    """A checkpoint (or LoRA adapter) really trained on one mixture."""

    weights: dict[str, float]
    model: str


@dataclass(frozen=True)
class ExecutorSpec:
    type: str = "local"
    shards: int = 1
    slurm: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    base: str
    experts: dict[str, str]
    """name -> source; empty when ``experts_query`` is used."""
    experts_query: dict[str, Any] | None
    mixtures: list[dict[str, Any]]
    benchmarks: list[Benchmark]
    include_path: Path | None
    backend: str | None
    backend_args: dict[str, Any]
    method: str
    scale: float
    aggregate: str
    output_dir: Path
    mode: str
    truth: list[TruthModel]
    executor: ExecutorSpec

    @property
    def benchmark_weights(self) -> dict[str, float]:
        return {b.task: b.weight for b in self.benchmarks}


class _Located:
    """Line numbers of every key in a YAML document, for error messages."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            node = yaml.compose(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node, at: tuple) -> None:
        self.lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[(*at, key.value)] = key.start_mark.line + 1
                self._walk(value, (*at, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*at, i))

    def error(self, at: tuple, message: str) -> ConfigError:
        probe = at
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe, 1)
        key = ".".join(str(p) for p in at) or "(top level)"
        return ConfigError(f"{self.path}:{line}: {key}: {message}")


def _resolve_path(base_dir: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _local_or_hub(base_dir: Path, source: str) -> str:
    """Relative directories are relative to the recipe; anything else is a Hub id, left alone."""
    candidate = base_dir / source
    return str(candidate) if not Path(source).is_absolute() and candidate.exists() else source


def load_recipe(path: str | Path, output_dir: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file; ``output_dir`` overrides the recipe's (``--out``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} not found")
    text = path.read_text(encoding="utf-8")
    loc = _Located(path, text)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise loc.error((), "a recipe is a mapping of " + ", ".join(TOP_KEYS))
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise loc.error((unknown[0],), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    base_dir = path.parent.resolve()

    def need(key: str, kind: type | tuple[type, ...]):
        if key not in data or data[key] in (None, ""):
            raise loc.error((key,), "required")
        if not isinstance(data[key], kind):
            raise loc.error((key,), f"must be a {getattr(kind, '__name__', kind)}")
        return data[key]

    base = _local_or_hub(base_dir, str(need("base", str)))
    experts_raw = need("experts", dict)
    experts: dict[str, str] = {}
    query = None
    if "query" in experts_raw:
        query = experts_raw["query"]
        if not isinstance(query, dict) or not query.get("domains"):
            raise loc.error(("experts", "query"), "needs domains: [..] (and optionally base:, author:)")
        for d in query["domains"]:
            check_name(str(d), "domain")
    else:
        for name, source in experts_raw.items():
            try:
                check_name(str(name))
            except ConfigError as err:
                raise loc.error(("experts", name), str(err)) from None
            if not isinstance(source, str) or not source:
                raise loc.error(("experts", name), "must be a directory or a Hub repo id[@revision]")
            experts[str(name)] = _local_or_hub(base_dir, source)
    mode = data.get("mode", "proxy")
    if mode not in ("proxy", "truth"):
        raise loc.error(("mode",), "must be proxy or truth")
    mixtures = data.get("mixtures") or []
    if mode == "proxy":
        mixtures = need("mixtures", list)
        for i, item in enumerate(mixtures):
            if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("grid", "paper", "dirichlet", "explicit"):
                raise loc.error(("mixtures", i), "each item is one of grid:, paper:, dirichlet:, explicit:")
    benchmarks = []
    for i, item in enumerate(need("benchmarks", list)):
        item = {"task": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not item.get("task"):
            raise loc.error(("benchmarks", i), "needs task: (an lmms-eval task name)")
        extra = set(item) - {"task", "weight", "metric", "limit"}
        if extra:
            raise loc.error(("benchmarks", i, sorted(extra)[0]), "unknown key; allowed: task, weight, metric, limit")
        try:
            weight = float(item.get("weight", 1.0))
        except (TypeError, ValueError):
            raise loc.error(("benchmarks", i, "weight"), "must be a number") from None
        if weight < 0:
            raise loc.error(("benchmarks", i, "weight"), "must not be negative")
        benchmarks.append(Benchmark(str(item["task"]), weight, item.get("metric"), item.get("limit")))
    tasks = [b.task for b in benchmarks]
    if len(set(tasks)) != len(tasks):
        raise loc.error(("benchmarks",), "a task is listed twice")
    method = data.get("method", "linear")
    if method not in METHODS:
        raise loc.error(("method",), f"must be one of {', '.join(METHODS)}")
    truth = []
    if mode == "truth":
        for i, item in enumerate(need("truth", list)):
            if not isinstance(item, dict) or "weights" not in item or "model" not in item:
                raise loc.error(("truth", i), "needs weights: {NAME: W, ...} and model: SOURCE")
            truth.append(TruthModel({str(k): float(v) for k, v in dict(item["weights"]).items()},
                                    _local_or_hub(base_dir, str(item["model"]))))
    executor_raw = data.get("executor") or {}
    if not isinstance(executor_raw, dict):
        raise loc.error(("executor",), "must be a mapping (type: local|slurm, ...)")
    bad = [k for k in executor_raw if k not in EXECUTOR_KEYS]
    if bad:
        raise loc.error(("executor", bad[0]), f"unknown key; allowed: {', '.join(EXECUTOR_KEYS)}")
    executor = ExecutorSpec(
        type=str(executor_raw.get("type", "local")), shards=int(executor_raw.get("shards", 1)),
        slurm={k: v for k, v in executor_raw.items() if k not in ("type", "shards")},
    )
    if executor.type not in ("local", "slurm", "submitit-local"):
        raise loc.error(("executor", "type"), "must be local, slurm or submitit-local")
    # Relative to the working directory, as LLaMA-Factory's output_dir (a shipped recipe must not
    # write into the installed package).
    out = Path(str(output_dir or data.get("output_dir") or f"sweeps/{path.stem}")).expanduser().absolute()
    include = _resolve_path(base_dir, data.get("include_path"))
    if include is not None and not include.is_dir():
        raise loc.error(("include_path",), f"{include} is not a directory")
    return Recipe(
        path=path.resolve(), name=str(data.get("name", path.stem)), base=base, experts=experts,
        experts_query=query, mixtures=list(mixtures), benchmarks=benchmarks, include_path=include,
        backend=data.get("backend"), backend_args=dict(data.get("backend_args") or {}), method=method,
        scale=float(data.get("scale", 1.0)), aggregate=str(data.get("aggregate", "weighted_mean")),
        output_dir=out, mode=mode, truth=truth, executor=executor,
    )


def expand_mixtures(recipe: Recipe, names: list[str]) -> list:
    """The recipe's mixture generators applied to the experts' names, duplicates removed."""
    from merge_proxy import generators as gen

    loc = _Located(recipe.path, recipe.path.read_text(encoding="utf-8"))
    out = []
    for i, item in enumerate(recipe.mixtures):
        kind, spec = next(iter(item.items()))
        try:
            if kind == "grid":
                spec = spec or {}
                out += gen.grid(names, spec.get("step", 0.25), bool(spec.get("interior", False)))
            elif kind == "paper":
                spec = {"set": spec} if isinstance(spec, str) else spec
                out += gen.paper(names, spec["set"], bool(spec.get("include_uniform", False)))
            elif kind == "dirichlet":
                out += gen.dirichlet(names, int(spec["n"]), spec.get("alpha", 1.0), int(spec.get("seed", 0)))
            else:
                out += gen.explicit(names, spec)
        except ConfigError as err:
            raise loc.error(("mixtures", i, kind), str(err)) from None
        except (KeyError, TypeError, ValueError) as err:
            raise loc.error(("mixtures", i, kind), f"malformed ({err})") from None
    return gen.unique(out)
