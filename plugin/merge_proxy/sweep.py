"""Scoring many mixtures on many benchmarks: one base load, an in-place re-merge per mixture.

The sweep evaluates through lmms-eval in this process with one :class:`~merge_proxy.lmms_model.MergeProxy`
instance, re-merged for every mixture (no checkpoint per mixture), and appends one journal record per
(mixture, benchmark) as soon as it is scored; a rerun skips what the journal holds, so a killed sweep
loses at most the benchmark in flight. ``mode: truth`` scores models really trained on mixtures into
the same journal schema. Shards of mixtures can run as SLURM jobs through submitit; each shard writes
its own journal file, gathered into the main one. Interrupting the submitter (Ctrl-C, SIGTERM)
cancels the shard jobs it is waiting for; what they scored stays in their journals for the rerun.
What a rerun may resume is decided in :mod:`merge_proxy.resume`; where shards run, in
:mod:`merge_proxy.executors`.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_proxy import executors
from merge_proxy.errors import ConfigError, MergeProxyError, MissingDependencyError
from merge_proxy.journal import (
    JOURNAL_FILE,
    SHARD_DIR,
    Journal,
    JournalRecord,
    read_with_shards,
    scored,
)
from merge_proxy.mixture import Mixture, make_mixture
from merge_proxy.recipe import Benchmark, Recipe, expand_mixtures, load_recipe
from merge_proxy.resume import ModelId, check_models, check_settings, check_truth_models, settings

if TYPE_CHECKING:  # lmms-eval is imported only where a sweep runs
    from lmms_eval.api.model import lmms

    from merge_proxy.experts import ResolvedModel
    from merge_proxy.lmms_model import MergeProxy

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class WorkItem:
    """One mixture and the benchmarks still to score for it (``model``: a truth checkpoint)."""

    mixture: Mixture
    benchmarks: tuple[Benchmark, ...]
    model: str | None = None


def expert_sources(recipe: Recipe) -> dict[str, str]:
    """name -> source: the recipe's list, or one expert per domain found on the Hub by tags."""
    if recipe.experts:
        return dict(recipe.experts)
    from merge_proxy.search import find_experts

    query = recipe.experts_query or {}
    sources: dict[str, str] = {}
    for domain in query["domains"]:
        found = find_experts(base=query.get("base"), domain=domain, author=query.get("author"))
        if not found:
            covered = sorted({f.domain for f in find_experts(base=query.get("base"), author=query.get("author"))
                              if f.domain})
            raise ConfigError(
                f"{recipe.path}: experts query found no expert for domain {domain!r}; "
                + (f"the experts it finds cover {', '.join(covered)}" if covered else
                   "it finds no expert at all: check its base (the Hub id the experts were trained from) and author")
            )
        if len(found) != 1:
            names = ", ".join(f.repo for f in found) or "none"
            raise ConfigError(
                f"{recipe.path}: experts query found {len(found)} experts for domain {domain!r} ({names}); "
                "list the experts explicitly under experts: NAME: SOURCE"
            )
        sources[domain] = f"{found[0].repo}@{found[0].sha}" if found[0].sha else found[0].repo
    return sources


def candidate_items(recipe: Recipe, names: Sequence[str]) -> list[WorkItem]:
    """Every (mixture, all benchmarks) of the recipe, before the journal is consulted."""
    benchmarks = tuple(recipe.benchmarks)
    if recipe.mode == "truth":
        items = []
        for i, t in enumerate(recipe.truth):
            try:  # in the experts' order, as the proxy's mixtures: the two journals must share keys
                mixture = make_mixture(t.weights, list(names), recipe.method)
            except ConfigError as err:
                raise ConfigError(f"{recipe.path}: truth[{i}] ({t.model}): {err}") from None
            items.append(WorkItem(mixture, benchmarks, t.model))
        return items
    return [WorkItem(m, benchmarks) for m in expand_mixtures(recipe, list(names))]


def all_records(out_dir: Path) -> list[JournalRecord]:
    """The main journal's records and every shard's, read only: a dry run or a shard job that only
    needs to know what is done writes nothing (concurrent shard starts once appended duplicates)."""
    records, fresh = read_with_shards(out_dir / JOURNAL_FILE)
    return records + fresh


def gather(out_dir: Path) -> Journal:
    """Fold shard journals into the main journal (once per key, a finite score over a non-finite
    one), so every reader sees one file."""
    journal = Journal(out_dir / JOURNAL_FILE)
    journal.append_many(read_with_shards(journal.path)[1])
    return journal


def pending(items: Sequence[WorkItem], done: set[tuple[str, str]]) -> list[WorkItem]:
    out = []
    for item in items:
        key = item.mixture.key()
        todo = tuple(b for b in item.benchmarks if (key, b.task) not in done)
        if todo:
            out.append(WorkItem(item.mixture, todo, item.model))
    return out


def _primary_metric(
    task_results: dict[str, Any], benchmark: Benchmark, default: str | None = None
) -> tuple[float, dict[str, float]]:
    """The score ranked on: the recipe's ``metric`` (several are summed), else the task's first
    declared metric (its ``metric_list``), never whichever metric lmms-eval happened to report
    first; divided by ``max_score`` when the recipe gives one."""
    metrics = {k: float(v) for k, v in task_results.items()
               if isinstance(v, (int, float)) and "," in k and "_stderr" not in k}
    if not metrics:
        raise ConfigError(f"lmms-eval reported no metric for {benchmark.task}")
    wanted = benchmark.metric_names or ((default,) if default else ())
    keys = []
    for name in wanted:
        key = next((k for k in metrics if k.split(",")[0] == name), None)
        if key is None:
            names = ", ".join(sorted({k.split(",")[0] for k in metrics}))
            raise ConfigError(f"benchmark {benchmark.task} has no metric {name!r}; it reports: {names}")
        keys.append(key)
    score = sum(metrics[k] for k in keys) if keys else metrics[next(iter(metrics))]
    return (score / benchmark.max_score if benchmark.max_score else score), metrics


def _declared_metrics(tasks, task: str) -> list[str]:
    """The metric names a task's YAML declares (empty when its config cannot be read ahead)."""
    try:
        config = tasks._get_config(task)
    except Exception:  # noqa: BLE001 - a group or unusual task: checked when lmms-eval reports
        return []
    return [m["metric"] for m in (config or {}).get("metric_list") or [] if isinstance(m, dict) and "metric" in m]


def load_tasks(recipe: Recipe, tasks: Any = None):
    """lmms-eval's task index for ``recipe`` (stock tasks, merge-proxy's :mod:`merge_proxy.tasks`, the
    recipe's ``include_path``; or ``tasks``, an index already built) and each benchmark's declared
    metrics, every benchmark's task and metric checked: a typo fails now, not after a whole benchmark
    ran. Returns (TaskManager, task -> metrics)."""
    if tasks is None:
        from lmms_eval.tasks import TaskManager

        from merge_proxy.tasks import tasks_dir

        paths = [str(tasks_dir())] + ([str(recipe.include_path)] if recipe.include_path else [])
        tasks = TaskManager(include_path=paths)
    missing = [b.task for b in recipe.benchmarks if b.task not in tasks.all_tasks]
    if missing:
        raise ConfigError(
            f"{recipe.path}: lmms-eval knows no task {', '.join(missing)}; check the name or include_path"
        )
    metrics = {b.task: _declared_metrics(tasks, b.task) for b in recipe.benchmarks}
    for b in recipe.benchmarks:
        unknown = [m for m in b.metric_names if metrics[b.task] and m not in metrics[b.task]]
        if unknown:
            raise ConfigError(
                f"{recipe.path}: benchmark {b.task} has no metric {unknown[0]!r}; its metrics: "
                f"{', '.join(metrics[b.task])}"
            )
    return tasks, metrics


def check_backend(recipe: Recipe) -> None:
    """The recipe's backend is one lmms-eval has (its default, the base architecture's, always is)."""
    from merge_proxy.lmms_model import backend_manifest

    if recipe.backend:
        try:
            backend_manifest(recipe.backend)
        except ConfigError as err:
            raise ConfigError(f"{recipe.path}: {err}") from None


class Evaluator:
    """lmms-eval in this process, with one merged-proxy instance re-merged per mixture."""

    def __init__(self, recipe: Recipe, sources: dict[str, str], chat_template: str | None = None) -> None:
        try:
            from lmms_eval.evaluator import simple_evaluate  # noqa: F401
        except ImportError:
            raise MissingDependencyError("lmms-eval", "lmms-eval", "merge-proxy sweep") from None
        self.recipe = recipe
        self.sources = sources
        # The submitter's pinned source (repo@sha) in a SLURM shard, else the recipe's.
        self.chat_template = chat_template or recipe.chat_template_from
        self.tasks, self.metrics = load_tasks(recipe)
        check_backend(recipe)
        self._proxy = None

    @cached_property
    def backend(self) -> str:
        """The recipe's backend, or the base architecture's default: it decides between lmms-eval's
        simple and chat protocol (internvl_hf has only a chat one) before the proxy is built. Only
        the base's config is fetched here: the proxy checks every expert before the weights come."""
        if self.recipe.backend:
            return self.recipe.backend
        from merge_proxy.experts import ExpertSpec, resolve
        from merge_proxy.lmms_model import default_backend

        return default_backend(resolve(ExpertSpec.parse(self.recipe.base), for_base=True, weights=False))

    def _model_args(self) -> dict[str, Any]:
        args = dict(self.recipe.backend_args)
        args["backend"] = self.backend
        if self.chat_template:
            args["chat_template_from"] = self.chat_template
        return args

    def proxy(self, mixture: Mixture) -> MergeProxy:
        """The one merged model of the sweep, built on first use, then re-merged in place."""
        from merge_proxy.lmms_model import proxy_class

        if self._proxy is None:
            self._proxy = proxy_class(self.backend)(
                pretrained=self.recipe.base, experts=";".join(f"{n}={s}" for n, s in self.sources.items()),
                weights=mixture.key().replace(",", ";"), method=self.recipe.method,
                scale=self.recipe.scale, **self._model_args(),
            )
        else:
            self._proxy.remerge(mixture)
        return self._proxy

    def truth_model(self, source: str) -> tuple[lmms, ResolvedModel]:
        """A checkpoint trained on a mixture (and where it was found): a LoRA adapter is merged at
        weight 1 (exactly PEFT's merge), a full checkpoint is loaded by the backend as is."""
        from merge_proxy.chat_template import apply_chat_template
        from merge_proxy.experts import ExpertSpec, resolve
        from merge_proxy.lmms_model import MergeProxy, default_backend, load_backend, proxy_class

        resolved = resolve(ExpertSpec.parse(source), for_base=True)  # a full one is loaded: tokenizer too
        if resolved.kind == "lora":
            return proxy_class(self.backend)(pretrained=self.recipe.base, experts=f"truth={source}", weights="truth=1",
                              **self._model_args()), resolved
        backend = self.recipe.backend or default_backend(resolved)
        template = self._template  # before the load: a wrong source fails in seconds
        model = load_backend(backend, str(resolved.path), self.recipe.backend_args,
                             want_simple=proxy_class(backend) is MergeProxy)
        if template is not None:
            apply_chat_template(model, template, backend)
        # evaluate() ends with lm.clean(), which deletes the loaded module; keep it for the next
        # benchmark, as MergeProxy.clean does.
        model.clean = gc.collect
        return model, resolved

    @cached_property
    def _template(self):
        """The chat template for full truth checkpoints, fetched once for all of them."""
        from merge_proxy.chat_template import load_chat_template

        return load_chat_template(self.chat_template) if self.chat_template else None

    @cached_property
    def _cli_args(self):
        """What ``lmms-eval --tasks ...`` hands evaluate(): its command line's defaults, so a sweep
        scores exactly as ``lmms-eval --model merge_proxy`` does.

        Without them simple_evaluate post-processes differently from the command line: every
        document keeps its media, so each image is decoded again after generation (0.9 ms a sample
        measured on 640x480 JPEGs, seconds per call of a real benchmark, thousands of calls in a
        sweep), and answers keep their ``<think>``/``<analysis>`` blocks, which the command line
        strips before scoring. Side files some tasks write (ocrbench's results breakdown) go under the
        sweep's directory, not the working directory. lmms-eval builds its parser inside a function
        that reads sys.argv (its own dispatcher rewrites sys.argv the same way)."""
        import sys
        from unittest import mock

        from lmms_eval.__main__ import parse_eval_args

        with mock.patch.object(sys, "argv", ["lmms-eval"]):
            args = parse_eval_args()[1]
        args.output_path = str(self.recipe.output_dir / "lmms_eval")
        return args

    def score(self, model: lmms, benchmark: Benchmark) -> tuple[float, dict[str, float]]:
        from lmms_eval.evaluator import simple_evaluate

        out = simple_evaluate(model=model, tasks=[benchmark.task], task_manager=self.tasks, limit=benchmark.limit,
                              log_samples=False, bootstrap_iters=0, verbosity="WARNING", cli_args=self._cli_args)
        declared = self.metrics.get(benchmark.task) or [None]
        return _primary_metric(out["results"][benchmark.task], benchmark, declared[0])


def _provenance(model) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return model.base.provenance(named=False), [e.provenance() for e in model.experts]


def run_items(recipe: Recipe, items: Sequence[WorkItem], journal: Journal, sources: dict[str, str],
              chat_template: str | None = None) -> int:
    """Score the items in this process, appending each result as soon as it exists (the models
    pinned and checked against the journal before: :func:`pin_models`)."""
    from importlib.metadata import version

    from tqdm.auto import tqdm

    evaluator = Evaluator(recipe, sources, chat_template)
    lmms_version = version("lmms-eval")
    total = sum(len(i.benchmarks) for i in items)
    written = 0
    kept = False
    with tqdm(total=total, desc=f"sweep {recipe.name}", unit="score") as bar:
        for item in items:
            started = time.perf_counter()
            pinned_model = fingerprint = None
            if item.model is None:
                model = evaluator.proxy(item.mixture)
            else:
                model, resolved = evaluator.truth_model(item.model)
                pinned_model, fingerprint = resolved.pinned_source, resolved.fingerprint
            merge_s = time.perf_counter() - started
            base, experts = _provenance(model) if hasattr(model, "merger") else ({}, [])
            if not kept:  # a model exists: the run got past every check
                keep_recipe(recipe)
                kept = True
            for benchmark in item.benchmarks:
                t0 = time.perf_counter()
                score, metrics = evaluator.score(model, benchmark)
                journal.append(JournalRecord(
                    mode=recipe.mode, mixture_id=item.mixture.key(), weights=item.mixture.as_dict(),
                    benchmark=benchmark.task, score=score, metrics=metrics, base=base, experts=experts,
                    model=pinned_model, model_fingerprint=fingerprint if fingerprint != pinned_model else None,
                    lmms_eval_version=lmms_version,
                    timings={"merge_s": round(merge_s, 4), "eval_s": round(time.perf_counter() - t0, 4)},
                    settings=settings(recipe, benchmark),
                ))
                written += 1
                merge_s = 0.0
                bar.update(1)
            if item.model is not None:  # a truth model serves one item: free it before the next loads
                del model
                _release_memory()
    return written


def keep_recipe(recipe: Recipe) -> None:
    """The recipe beside its journal (the report reads its benchmark weights), written once the run has
    passed every check and produced a model: a run that fails before leaves the directory as it was."""
    from merge_proxy.atomic import atomic_write_text

    recipe.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(recipe.output_dir / "recipe.yaml", recipe.path.read_text(encoding="utf-8"))


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_shard(recipe_path: str, out_dir: str, mixture_keys: list[str], shard: str,
              sources: dict[str, str] | None = None, base: str | None = None, chat_template: str | None = None,
              truth: dict[str, str] | None = None) -> int:
    """A SLURM (or submitit local) job: score some mixtures into the shard's own journal file.

    ``shard`` names that file uniquely per submission, so a job of an earlier submission that is
    still running never appends to the same file as a new one (appends from two NFS clients
    interleave). ``sources``, ``base``, ``chat_template`` and ``truth`` (mixture id -> trained model)
    are the submitter's pinned ones (``repo@sha``), so shards that start hours apart still merge and
    load the same commits and prompt alike (the journal's settings keep the recipe's own
    ``chat_template_from``).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("shard %s: %d mixture(s), CUDA_VISIBLE_DEVICES=%s", shard, len(mixture_keys),
                os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    recipe = load_recipe(recipe_path, output_dir=out_dir)
    if base:
        recipe = replace(recipe, base=base)
    sources = sources or expert_sources(recipe)
    out = Path(out_dir)
    shard_journal = Journal(out / SHARD_DIR / f"{shard}.jsonl")
    wanted = set(mixture_keys)
    items = with_truth_models([i for i in candidate_items(recipe, list(sources)) if i.mixture.key() in wanted],
                              truth or {})
    return run_items(recipe, pending(items, scored(all_records(out), recipe.mode)), shard_journal, sources,
                     chat_template)


def _submit(recipe: Recipe, out: Path, items: Sequence[WorkItem], executor_type: str, shards: int,
            pinned: PinnedModels) -> None:
    from merge_proxy.experts import pin_source

    template = pin_source(recipe.chat_template_from) if recipe.chat_template_from else None
    logger.info("shards merge base %s and experts %s%s", pinned.base,
                ", ".join(f"{n}={s}" for n, s in pinned.experts.items()),
                f", prompting with the chat template of {template}" if template else "")
    keys = [i.mixture.key() for i in items]
    n = max(1, min(shards, len(keys)))
    chunks = [keys[i::n] for i in range(n)]
    params = dict(recipe.executor.slurm)
    local = executor_type == "submitit-local"
    executor = executors.local_executor(out, params.get("timeout_min")) if local else \
        executors.slurm_executor(out, recipe.name, params)
    submission = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    names = [f"shard-{submission}-{i:04d}" for i in range(n)]
    args = ([str(recipe.path)] * n, [str(out)] * n, chunks, names, [pinned.experts] * n, [pinned.base] * n,
            [template] * n, [pinned.truth] * n)
    jobs: list[Any] = []
    try:
        if local:
            executors.submit_local(executor, run_shard, args, params.get("gpus_per_node"), jobs)
        else:
            jobs.extend(executor.map_array(run_shard, *args))
        logger.info("submitted %d job(s): %s", len(jobs), ", ".join(j.job_id for j in jobs))
        failures = executors.wait(jobs)
    except KeyboardInterrupt:
        executors.cancel(jobs)
        gather(out)
        raise
    gather(out)
    if failures:
        fix = "fix that, then rerun" if any(f.needs_fix for f in failures) else "rerun"
        raise ConfigError(f"{len(failures)} shard job(s) failed ({'; '.join(map(str, failures))}); logs in "
                          f"{out / 'submitit'}; {fix} the same command to finish the remaining work")


@dataclass(frozen=True)
class SweepPlan:
    recipe: Recipe
    sources: dict[str, str]
    items: list[WorkItem]
    done: int
    total: int
    records: list[JournalRecord] = field(default_factory=list)
    """The journals' records when planned (shards included): what the run checks its models against."""
    ungathered: list[JournalRecord] = field(default_factory=list)
    """Those only in shard journals (an earlier submitter's, killed before it gathered them)."""


def plan(recipe_path: str | Path, out_dir: str | Path | None = None) -> SweepPlan:
    recipe = load_recipe(recipe_path, output_dir=out_dir)
    sources = expert_sources(recipe)
    items = candidate_items(recipe, list(sources))
    records: list[JournalRecord] = []
    if (recipe.output_dir / JOURNAL_FILE).is_dir():
        raise ConfigError(f"{recipe.output_dir / JOURNAL_FILE} is a directory, where the sweep appends its journal; "
                          "move it away or pass another --out")
    ungathered: list[JournalRecord] = []
    if recipe.output_dir.exists():
        records, ungathered = read_with_shards(recipe.output_dir / JOURNAL_FILE)
        records += ungathered
        check_settings(recipe, records)
        if recipe.mode == "proxy":
            check_models(records, ModelId.from_source(recipe.base),
                         {n: ModelId.from_source(s) for n, s in sources.items()}, recipe.output_dir)
        check_truth_models(records, {i.mixture.key(): ModelId.from_source(i.model) for i in items if i.model},
                           recipe.output_dir)
    todo = pending(items, scored(records, recipe.mode))
    total = sum(len(i.benchmarks) for i in items)
    return SweepPlan(recipe, sources, todo, total - sum(len(i.benchmarks) for i in todo), total, records, ungathered)


@dataclass(frozen=True)
class PinnedModels:
    """Every model a run loads, located, checked and pinned (``repo@sha``; a local one as given) before
    its first score, so every mixture and every shard loads the same commits."""

    base: str
    experts: dict[str, str]
    truth: dict[str, str]
    """Mixture id -> its trained model (mode truth)."""
    checked: tuple[str, ...] = ()
    """The models located (``base model``, ``expert NAME``, ``truth model of MIXTURE``)."""
    unchecked: tuple[str, ...] = ()
    """Those left unchecked because the Hub was unreachable (a dry run only)."""


def with_truth_models(items: Sequence[WorkItem], truth: Mapping[str, str]) -> list[WorkItem]:
    """The items with their truth models as pinned (mixture id -> ``repo@sha``), so every item loads
    the commit that was checked, however long after the check it runs."""
    return [replace(i, model=truth.get(i.mixture.key(), i.model)) for i in items]


def pin_models(recipe: Recipe, sources: dict[str, str], items: Sequence[WorkItem],
               records: Sequence[JournalRecord] = (), *, offline_ok: bool = False) -> PinnedModels:
    """Locate every model the items need (the base and experts of proxies, each truth model) from a
    directory listing or the Hub's file list, nothing downloaded, and refuse a journal whose scores came
    from other commits or files. ``offline_ok``: an unreachable Hub leaves a model unchecked (a dry run
    on a node without network) instead of failing."""
    from merge_proxy.experts import check_source
    from merge_proxy.flags import parse_flag
    from merge_proxy.hub import HubUnreachableError

    checked: list[str] = []
    unchecked: list[str] = []
    allow_pickle = bool(parse_flag(recipe.backend_args.get("allow_pickle"), False))  # the model refuses others

    def pin(source: str, label: str, for_base: bool) -> tuple[str, str | None]:
        checked.append(label)
        try:
            return check_source(source, label, for_base=for_base, allow_pickle=allow_pickle)
        except MergeProxyError as err:
            if offline_ok and isinstance(err, HubUnreachableError):
                unchecked.append(label)
                return source, None
            err.args = (f"{recipe.path}: {err}",)
            raise

    proxies = any(i.model is None for i in items)
    experts = {n: pin(s, f"expert {n}", False)[0] for n, s in sources.items()} if proxies else dict(sources)
    truth: dict[str, str] = {}
    adapters = False  # a LoRA truth model is merged onto the base; a full one needs none
    for i in items:
        if i.model:
            truth[i.mixture.key()], kind = pin(i.model, f"truth model of {i.mixture.key()}", True)
            adapters = adapters or kind != "full"
    base = pin(recipe.base, "base model", True)[0] if proxies or adapters else recipe.base
    if proxies and recipe.mode == "proxy":
        check_models(records, ModelId.from_source(base), {n: ModelId.from_source(p) for n, p in experts.items()},
                     recipe.output_dir)
    check_truth_models(records, {k: ModelId.from_source(p) for k, p in truth.items()}, recipe.output_dir)
    return PinnedModels(base, experts, truth, tuple(checked), tuple(unchecked))


def run_sweep(recipe_path: str | Path, out_dir: str | Path | None = None, executor: str | None = None,
              shards: int | None = None) -> Journal:
    """Score everything the recipe asks for that the journal does not hold yet."""
    p = plan(recipe_path, out_dir)
    out = p.recipe.output_dir
    journal = Journal(out / JOURNAL_FILE)
    journal.append_many(p.ungathered)  # what an earlier (killed) submitter never gathered; this is the one writer
    logger.info("sweep %s: %d of %d scores done, %d mixtures to go", p.recipe.name, p.done, p.total, len(p.items))
    if not p.items:
        if journal.path.is_file():
            keep_recipe(p.recipe)
        return journal
    kind = executor or p.recipe.executor.type
    if kind != "local":
        try:  # before the models are pinned
            import submitit  # noqa: F401
        except ImportError:
            raise MissingDependencyError("submitit", "slurm", f"executor {kind}") from None
    pinned = pin_models(p.recipe, p.sources, p.items, p.records)
    p = replace(p, records=[], ungathered=[])  # hold no journal while scoring (GBs for a million records)
    if kind == "local":
        if (shards or p.recipe.executor.shards) > 1:
            logger.warning("executor local scores in this process, one mixture after another: %d shards ignored; "
                           "--executor submitit-local runs them as processes, one per GPU",
                           shards or p.recipe.executor.shards)
        run_items(replace(p.recipe, base=pinned.base), with_truth_models(p.items, pinned.truth), journal,
                  pinned.experts)
    else:
        _submit(p.recipe, out, p.items, kind, shards or p.recipe.executor.shards, pinned)
    return journal
