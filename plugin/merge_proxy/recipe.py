"""Sweep recipes: YAML that says which base, experts, mixtures and benchmarks to score.

Validated before anything runs, with errors that name the file, the line and the key, since a recipe
typo found after an hour of scoring (or after a SLURM queue wait) costs the most. Relative paths are
relative to the recipe file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merge_proxy.errors import ConfigError
from merge_proxy.mixture import METHODS, Mixture, check_name

TOP_KEYS = ("name", "base", "experts", "mixtures", "benchmarks", "include_path", "backend", "backend_args",
            "chat_template_from", "method", "scale", "aggregate", "output_dir", "mode", "truth", "executor")
BENCHMARK_KEYS = ("task", "weight", "metric", "max_score", "limit")
#: The keys of each mixture generator's mapping.
GENERATOR_KEYS = {"grid": ("step", "interior"), "paper": ("set", "include_uniform"), "dirichlet": ("n", "alpha", "seed")}
EXECUTOR_KEYS = ("type", "shards", "partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min",
                 "array_parallelism", "account", "qos")


@dataclass(frozen=True)
class Benchmark:
    task: str
    weight: float = 1.0
    metric: str | tuple[str, ...] | None = None
    """Metric to rank on (lmms-eval's name without the filter), or several summed (MME's cognition
    + perception); default: the task's first metric."""
    limit: int | float | None = None
    max_score: float | None = None
    """The metric's full scale: the score is divided by it (MME: 2800), so every benchmark is 0-1
    before the weights (which are relative) average them."""

    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.metric is None:
            return ()
        return (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)


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
    chat_template_from: str | None
    """A model whose chat template renders the prompts (the base's -Instruct model for a base model
    whose own template is not the format the experts were trained in)."""
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
        except yaml.YAMLError as err:  # one line at the file's own line, not "<unicode string>"
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML: {problem}") from None
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


def _find_recipe(path: Path) -> Path:
    """A file, or the name of a recipe shipped in the package (``qwen2vl-2b-3dom[.yaml]``), so the
    recipes' own headers work from any directory after ``pip install``."""
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"recipe {path} is a directory; give the recipe's YAML file")
    from merge_proxy import resources

    # The demo's recipe is a template `merge-proxy demo` fills in beside the model and data it builds.
    shipped = [r for r in resources.list_recipes() if r != DEMO_TEMPLATE]
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if path.parent == Path(".") and name == DEMO_TEMPLATE:
        raise ConfigError(f"the shipped {DEMO_TEMPLATE!r} recipe is the template of `merge-proxy demo`, which builds "
                          "the model, data and Hub it needs: run `merge-proxy demo` (its recipe is then OUT/demo.yaml)")
    if path.parent == Path(".") and name in shipped:
        return Path(str(resources.recipe_path(name)))
    raise ConfigError(f"recipe {path} not found; give a file, or one of the shipped recipes: {', '.join(shipped)}")


#: The shipped recipe that is only a template for ``merge-proxy demo``.
DEMO_TEMPLATE = "demo"


def load_recipe(path: str | Path, output_dir: str | Path | None = None) -> Recipe:
    """Read and validate a recipe file; ``output_dir`` overrides the recipe's (``--out``)."""
    path = _find_recipe(Path(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8") from None
    loc = _Located(path, text)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:  # a tag safe_load does not construct (!env, !!python/...)
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: {getattr(err, 'problem', None) or err}; a recipe is plain YAML") from None
    if not isinstance(data, dict):
        raise loc.error((), "a recipe is a mapping of " + ", ".join(TOP_KEYS))
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise loc.error((unknown[0],), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    base_dir = path.parent.resolve()

    base = _local_or_hub(base_dir, str(_need(loc, data, "base", str)))
    experts, query = _parse_experts(loc, _need(loc, data, "experts", dict), base_dir)
    mode = data.get("mode", "proxy")
    if mode not in ("proxy", "truth"):
        raise loc.error(("mode",), "must be proxy or truth")
    mixtures = _parse_mixtures(loc, _need(loc, data, "mixtures", list)) if mode == "proxy" else data.get("mixtures") or []
    benchmarks = _parse_benchmarks(loc, _need(loc, data, "benchmarks", list))
    method = data.get("method", "linear")
    if method not in METHODS:
        raise loc.error(("method",), f"must be one of {', '.join(METHODS)}")
    truth = _parse_truth(loc, _need(loc, data, "truth", list), base_dir) if mode == "truth" else []
    executor = _parse_executor(loc, data.get("executor") or {})
    # Relative to the working directory, as LLaMA-Factory's output_dir (a shipped recipe must not
    # write into the installed package).
    out = Path(str(output_dir or data.get("output_dir") or f"sweeps/{path.stem}")).expanduser().absolute()
    include = _resolve_path(base_dir, data.get("include_path"))
    if include is not None and not include.is_dir():
        raise loc.error(("include_path",), f"{include} is not a directory")
    backend_args = data.get("backend_args") or {}
    if not isinstance(backend_args, dict):
        raise loc.error(("backend_args",), "must be a mapping of the backend's model_args (max_pixels: ..., ...)")
    template = data.get("chat_template_from")
    if template is not None and not (isinstance(template, str) and template):
        raise loc.error(("chat_template_from",), "must be a model directory, a Hub repo id[@revision] or a .jinja file")
    scale = _number(loc, ("scale",), data.get("scale", 1.0))
    aggregate = str(data.get("aggregate", "weighted_mean"))
    if aggregate != "weighted_mean":
        raise loc.error(("aggregate",), "only weighted_mean is supported (the benchmarks' weights, normalised)")
    return Recipe(
        path=path.resolve(), name=str(data.get("name", path.stem)), base=base, experts=experts,
        experts_query=query, mixtures=list(mixtures), benchmarks=benchmarks, include_path=include,
        backend=data.get("backend"), backend_args=dict(backend_args), method=method,
        chat_template_from=_local_or_hub(base_dir, template) if template else None,
        scale=scale, aggregate=aggregate,
        output_dir=out, mode=mode, truth=truth, executor=executor,
    )


def _need(loc: _Located, data: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    """``data[key]``, present, not empty, of ``kind``."""
    if key not in data or data[key] in (None, "", [], {}):
        raise loc.error((key,), "required" if key not in data or data[key] in (None, "") else "is empty")
    if not isinstance(data[key], kind):
        raise loc.error((key,), f"must be a {getattr(kind, '__name__', kind)}")
    return data[key]


def _parse_experts(loc: _Located, raw: dict, base_dir: Path) -> tuple[dict[str, str], dict[str, Any] | None]:
    """(name -> source, None) for an explicit list; ({}, query) for experts found on the Hub by tags."""
    if "query" in raw:
        query = raw["query"]
        if not isinstance(query, dict) or not isinstance(query.get("domains"), list) or not query["domains"]:
            raise loc.error(("experts", "query"), "needs domains: [a, b, ...] (a list; optionally base:, author:)")
        bad = [k for k in query if k not in ("domains", "base", "author")]
        if bad:
            raise loc.error(("experts", "query", bad[0]), "unknown key; allowed: domains, base, author")
        for j, d in enumerate(query["domains"]):
            try:
                check_name(str(d), "domain")
            except ConfigError as err:
                raise loc.error(("experts", "query", "domains", j), str(err)) from None
        return {}, query
    experts: dict[str, str] = {}
    for name, source in raw.items():
        try:
            check_name(str(name))
        except ConfigError as err:
            raise loc.error(("experts", name), str(err)) from None
        if not isinstance(source, str) or not source:
            raise loc.error(("experts", name), "must be a directory or a Hub repo id[@revision]")
        experts[str(name)] = _local_or_hub(base_dir, source)
    return experts, None


def _parse_mixtures(loc: _Located, items: list) -> list[dict[str, Any]]:
    """The generators as written (expanded against the experts' names by :func:`expand_mixtures`)."""
    for i, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("grid", "paper", "dirichlet", "explicit"):
            raise loc.error(("mixtures", i), "each item is one of grid:, paper:, dirichlet:, explicit:")
        _check_generator(loc, i, *next(iter(item.items())))
    return items


def _parse_benchmarks(loc: _Located, items: list) -> list[Benchmark]:
    benchmarks = [_parse_benchmark(loc, i, item) for i, item in enumerate(items)]
    tasks = [b.task for b in benchmarks]
    if len(set(tasks)) != len(tasks):
        raise loc.error(("benchmarks",), "a task is listed twice")
    return benchmarks


def _parse_benchmark(loc: _Located, i: int, item: Any) -> Benchmark:
    item = {"task": item} if isinstance(item, str) else item
    if not isinstance(item, dict) or not item.get("task"):
        raise loc.error(("benchmarks", i), "needs task: (an lmms-eval task name)")
    extra = set(item) - set(BENCHMARK_KEYS)
    if extra:
        raise loc.error(("benchmarks", i, sorted(extra)[0]), f"unknown key; allowed: {', '.join(BENCHMARK_KEYS)}")
    weight = _number(loc, ("benchmarks", i, "weight"), item.get("weight", 1.0), minimum=0.0)
    metric = item.get("metric")
    if isinstance(metric, list) and metric and all(isinstance(m, str) and m for m in metric):
        metric = tuple(metric)
    elif metric is not None and not (isinstance(metric, str) and metric):
        raise loc.error(("benchmarks", i, "metric"), "must be a metric name, or a list of names to sum")
    max_score = item.get("max_score")
    if max_score is not None:
        max_score = _number(loc, ("benchmarks", i, "max_score"), max_score, minimum=0.0, strict=True)
    limit = item.get("limit")
    # As lmms-eval reads it: a float below 1 is a fraction, anything else a count (1.0 is ONE sample).
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0
                              or (isinstance(limit, float) and limit >= 1)):
        raise loc.error(("benchmarks", i, "limit"), "must be a number of samples (an integer) or a fraction "
                        "below 1 (lmms-eval reads 1.0 as one sample); leave it out to score every sample")
    return Benchmark(str(item["task"]), weight, metric, limit, max_score)


def _parse_truth(loc: _Located, items: list, base_dir: Path) -> list[TruthModel]:
    truth = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "weights" not in item or "model" not in item:
            raise loc.error(("truth", i), "needs weights: {NAME: W, ...} and model: SOURCE")
        if not isinstance(item["weights"], dict):
            raise loc.error(("truth", i, "weights"), "must be a mapping {NAME: W, ...}")
        weights = {str(k): _number(loc, ("truth", i, "weights", k), v) for k, v in item["weights"].items()}
        truth.append(TruthModel(weights, _local_or_hub(base_dir, str(item["model"]))))
    return truth


def _parse_executor(loc: _Located, raw: Any) -> ExecutorSpec:
    if not isinstance(raw, dict):
        raise loc.error(("executor",), "must be a mapping (type: local|slurm, ...)")
    bad = [k for k in raw if k not in EXECUTOR_KEYS]
    if bad:
        raise loc.error(("executor", bad[0]), f"unknown key; allowed: {', '.join(EXECUTOR_KEYS)}")
    shards = raw.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise loc.error(("executor", "shards"), "must be a whole number of jobs, at least 1")
    gpus = raw.get("gpus_per_node")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0):
        raise loc.error(("executor", "gpus_per_node"), "must be a whole number of GPUs per job, 0 or more")
    executor = ExecutorSpec(type=str(raw.get("type", "local")), shards=shards,
                            slurm={k: v for k, v in raw.items() if k not in ("type", "shards")})
    if executor.type not in ("local", "slurm", "submitit-local"):
        raise loc.error(("executor", "type"), "must be local, slurm or submitit-local")
    return executor


def _number(loc: _Located, at: tuple, value: Any, minimum: float | None = None, strict: bool = False) -> float:
    """A finite number (YAML ints and floats, not booleans or strings), optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise loc.error(at, f"must be a finite number, not {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise loc.error(at, f"must be {'above' if strict else 'at least'} {minimum:g}")
    return float(value)


def _check_generator(loc: _Located, i: int, kind: str, spec: Any) -> None:
    """The generator's own keys and value types, so a typo (``stp:``) is not a silent default."""
    at = ("mixtures", i, kind)
    if kind == "explicit":
        if not isinstance(spec, list) or not spec:
            raise loc.error(at, "must be a list of mixtures ({NAME: W, ...} or 'NAME=W,NAME=W')")
        return
    if kind == "paper" and isinstance(spec, str):
        return
    if kind == "grid" and spec is None:
        return
    if not isinstance(spec, dict):
        hint = "set: two_domain|three_domain|four_domain" if kind == "paper" else ", ".join(GENERATOR_KEYS[kind])
        raise loc.error(at, f"must be a mapping ({hint})")
    bad = [k for k in spec if k not in GENERATOR_KEYS[kind]]
    if bad:
        raise loc.error((*at, bad[0]), f"unknown key; allowed: {', '.join(GENERATOR_KEYS[kind])}")
    for flag in ("interior", "include_uniform"):
        if flag in spec and not isinstance(spec[flag], bool):
            raise loc.error((*at, flag), f"must be true or false, not {spec[flag]!r}")
    for key in ("n", "seed"):
        if key in spec and (isinstance(spec[key], bool) or not isinstance(spec[key], int)):
            raise loc.error((*at, key), f"must be a whole number, not {spec[key]!r}")
    if kind == "dirichlet" and "n" not in spec:
        raise loc.error(at, "needs n: (how many mixtures to draw)")
    if kind == "paper" and "set" not in spec:
        raise loc.error(at, "needs set: two_domain|three_domain|four_domain")


def expand_mixtures(recipe: Recipe, names: list[str]) -> list[Mixture]:
    """The recipe's mixture generators applied to the experts' names, duplicates removed."""
    from merge_proxy import generators as gen

    loc = _Located(recipe.path, recipe.path.read_text(encoding="utf-8"))
    out = []
    for i, item in enumerate(recipe.mixtures):
        kind, spec = next(iter(item.items()))
        at = ("mixtures", i, kind)
        if kind == "grid":
            spec = spec or {}
            out += _generated(loc, at, gen.grid, names, spec.get("step", 0.25), bool(spec.get("interior", False)))
        elif kind == "paper":
            spec = {"set": spec} if isinstance(spec, str) else spec
            out += _generated(loc, at, gen.paper, names, spec["set"], bool(spec.get("include_uniform", False)))
        elif kind == "dirichlet":
            out += _generated(loc, at, gen.dirichlet, names, int(spec["n"]), spec.get("alpha", 1.0),
                              int(spec.get("seed", 0)))
        else:
            for j, one in enumerate(spec):  # per item, so an error names the item at fault
                out += _generated(loc, (*at, j), gen.explicit, names, [one])
    return gen.unique(out)


def _generated(loc: _Located, at: tuple, generator: Any, *args: Any) -> list:
    """A generator's mixtures; its errors located at the recipe entry that asked for them."""
    try:
        return generator(*args)
    except ConfigError as err:
        raise loc.error(at, str(err)) from None
    except (KeyError, TypeError, ValueError) as err:
        raise loc.error(at, f"malformed ({err})") from None
