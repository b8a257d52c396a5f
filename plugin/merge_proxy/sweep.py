"""Scoring many mixtures on many benchmarks: one base load, an in-place re-merge per mixture.

The sweep evaluates through lmms-eval in this process with one :class:`~merge_proxy.lmms_model.MergeProxy`
instance, re-merged for every mixture (no checkpoint per mixture), and appends one journal record per
(mixture, benchmark) as soon as it is scored; a rerun skips what the journal holds, so a killed sweep
loses at most the benchmark in flight. ``mode: truth`` scores models really trained on mixtures into
the same journal schema. Shards of mixtures can run as SLURM jobs through submitit; each shard writes
its own journal file, gathered into the main one. Interrupting the submitter (Ctrl-C, SIGTERM)
cancels the shard jobs it is waiting for; what they scored stays in their journals for the rerun.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_proxy.errors import ConfigError, MissingDependencyError
from merge_proxy.journal import (
    JOURNAL_FILE,
    SHARD_DIR,
    Journal,
    JournalRecord,
    new_information,
    read_with_shards,
    scored,
    shard_journals,
)
from merge_proxy.mixture import Mixture, make_mixture
from merge_proxy.recipe import Benchmark, Recipe, expand_mixtures, load_recipe

if TYPE_CHECKING:  # lmms-eval is imported only where a sweep runs
    from lmms_eval.api.model import lmms

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
    held = journal.records()
    for shard in shard_journals(out_dir):
        fresh = new_information(held, Journal(shard).records())
        journal.append_many(fresh)
        held += fresh
    return journal


def settings(recipe: Recipe, benchmark: Benchmark) -> dict[str, Any]:
    """Everything besides the mixture that decides a score, as the journal stores it (JSON types)."""
    import json

    found = {
        "limit": benchmark.limit, "metric": list(benchmark.metric_names) or None, "method": recipe.method,
        "scale": recipe.scale, "backend": recipe.backend, "backend_args": recipe.backend_args,
        "max_score": benchmark.max_score, "chat_template_from": recipe.chat_template_from,
        "postprocess": POSTPROCESS,
    }
    if found["metric"] and len(found["metric"]) == 1:
        found["metric"] = found["metric"][0]
    # Settings added later are stored only when used, so journals written before them still resume.
    return json.loads(json.dumps({k: v for k, v in found.items() if v is not None or k in _ALWAYS}, sort_keys=True))


#: Settings every journal record has held from the start (None included), and ``postprocess``, held
#: since answers are post-processed as on lmms-eval's command line: a journal scored before then
#: (images kept, reasoning blocks not stripped) is not resumed into.
_ALWAYS = ("limit", "metric", "method", "scale", "backend", "backend_args", "postprocess")
#: How lmms-eval post-processes answers in a sweep: with its command line's defaults (see
#: :meth:`Evaluator._cli_args`).
POSTPROCESS = "lmms-eval-cli"


def check_settings(recipe: Recipe, records: Sequence[JournalRecord]) -> None:
    """Refuse to resume into a journal scored with other settings (a ``limit: 5`` smoke run, another
    scale): counting those records as done would mix two experiments in one ranking."""
    wanted = {b.task: settings(recipe, b) for b in recipe.benchmarks}
    for record in records:
        expected = wanted.get(record.benchmark)
        if record.mode != recipe.mode or expected is None or not record.settings:
            continue
        keys = sorted(set(expected) | set(record.settings))
        changed = ", ".join(f"{k}: {record.settings.get(k)!r} -> {expected.get(k)!r}"
                            for k in keys if record.settings.get(k) != expected.get(k))
        if not changed:
            continue
        raise ConfigError(
            f"{recipe.output_dir} holds {record.benchmark} scores made with other settings ({changed}); resuming would "
            "mix two experiments: pass a new --out (or output_dir), or move the old journal away"
        )


@dataclass(frozen=True)
class ModelId:
    """A model as a journal names it, compared with what a rerun would score.

    ``repo`` is a Hub repo id (its revision aside) or :data:`LOCAL`; ``detail`` what tells two versions
    apart, when known: the commit (``repo@sha``) of a Hub model, the weight files' digest of a local one
    (:func:`merge_proxy.experts.local_fingerprint`: a moved folder is the same model, one re-trained in
    place is not). Unknown details (an unpinned revision, a journal older than the field) match.
    """

    repo: str
    detail: str | None
    shown: str

    @classmethod
    def from_source(cls, source: str) -> ModelId:
        """From a recipe's or a submitter's source text (``ORG/NAME[@REV]`` or a directory)."""
        from merge_proxy.experts import local_fingerprint

        path = Path(source).expanduser()
        if path.is_dir():
            return cls(LOCAL, local_fingerprint(path), str(path.resolve()))
        if source.startswith(("/", "~", ".")):  # a folder that is not there (any more)
            return cls(LOCAL, None, source)
        repo = _without_revision(source)
        pinned = source if "@" in source and len(source.rsplit("@", 1)[1]) == 40 else None
        return cls(repo, pinned, source)

    @classmethod
    def from_record(cls, entry: Mapping[str, Any]) -> ModelId | None:
        """From a journal record's base or expert entry (None when it names no source)."""
        source = entry.get("source")
        if not source:
            return None
        if entry.get("revision") or not (source.startswith(("/", "~", ".")) or Path(source).expanduser().exists()):
            return cls(_without_revision(source), entry.get("pinned"), entry.get("pinned") or source)
        return cls(LOCAL, entry.get("fingerprint"), entry.get("pinned") or source)

    def same(self, other: ModelId) -> bool:
        if self.repo != other.repo:
            return False
        if self.detail and other.detail:
            return self.detail == other.detail
        if self.repo == LOCAL:  # a journal older than fingerprints: its folder, where it still is
            return not (Path(self.shown).exists() and Path(other.shown).exists()) or _same_path(self.shown, other.shown)
        return True

    def same_place(self, other: ModelId) -> bool:
        """The same repo or folder (if not the same version)."""
        return self.repo == other.repo and (self.repo != LOCAL or _same_path(self.shown, other.shown))


#: :attr:`ModelId.repo` of a local directory.
LOCAL = "(a local directory)"


def check_models(records: Sequence[JournalRecord], base: ModelId, experts: Mapping[str, ModelId], where: Path) -> None:
    """Refuse to resume into a journal whose proxies merged other models: another base, another expert
    under a name or the experts in another order (recipe B run into recipe A's directory), a
    re-published expert's new commit, a local expert re-trained in place. Their scores would be
    counted as done and ranked with the new ones. Checked from the recipe before anything runs, and
    again once the sources are pinned or resolved (then every commit is known)."""
    now = {"base": base, **experts}
    seen: set[str] = set()
    for record in records:
        if record.mode != "proxy" or not record.experts:
            continue
        signature = repr((record.base, record.experts))
        if signature in seen:
            continue
        seen.add(signature)
        order = [e.get("name") for e in record.experts]
        if order != list(experts) and sorted(map(str, order)) == sorted(experts):
            raise ConfigError(
                f"{where} holds proxy scores of the experts in the order {', '.join(map(str, order))}, the recipe "
                f"lists {', '.join(experts)}: mixture ids follow that order, so list the experts as the journal does"
            )
        was = {"base": ModelId.from_record(record.base), **{e.get("name"): ModelId.from_record(e) for e in record.experts}}
        differ = []
        for k in ("base", *sorted((set(was) | set(now)) - {"base"}, key=str)):
            if k in was and was[k] is None:  # an entry without a source (written before the field): not judged
                continue
            if k not in was or k not in now or not was[k].same(now[k]):
                differ.append(k)
        if not differ:
            continue
        changed = "; ".join(f"{k}: {was[k].shown if was.get(k) else 'none'} -> {now[k].shown if k in now else 'none'}"
                            for k in differ)
        why = ""
        updated = [k for k in differ if was.get(k) and k in now and was[k].same_place(now[k])]
        if any(now[k].repo == LOCAL for k in updated):
            why += "; a local folder's weight files changed since: re-trained, or copied anew"
        if any(now[k].repo != LOCAL for k in updated):
            why += ("; a new commit: to keep scoring the journal's, pin it in the recipe: "
                    + ", ".join(f"{k}: {was[k].detail}" for k in updated if now[k].repo != LOCAL))
        raise ConfigError(
            f"{where} holds proxy scores merged from other models ({changed}{why}); resuming would rank two "
            "sets of experts together: pass a new --out (or output_dir), or move the old journal away"
        )


def check_truth_models(records: Sequence[JournalRecord], items: Sequence[WorkItem], where: Path) -> None:
    """Refuse to resume a truth journal whose mixtures were scored on other trained models."""
    wanted = {i.mixture.key(): ModelId.from_source(i.model) for i in items if i.model}
    for record in records:
        if record.mode != "truth" or not record.model or record.mixture_id not in wanted:
            continue
        have = ModelId.from_source(record.model)
        if have.repo == LOCAL and Path(have.shown).expanduser().is_dir():
            have = ModelId(LOCAL, None, have.shown)  # its files then are unknown: judged by the folder
        if have.same(wanted[record.mixture_id]):
            continue
        raise ConfigError(
            f"{where} holds truth scores of {record.mixture_id} from {have.shown}, the recipe trains it as "
            f"{wanted[record.mixture_id].shown}: pass a new --out (or output_dir), or move the old journal away"
        )


def _same_path(a: str | None, b: str | None) -> bool:
    return bool(a and b) and Path(a).expanduser().exists() and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _without_revision(source: str | None) -> str | None:
    """``ORG/NAME[/SUB]`` of ``ORG/NAME[/SUB][@REV]``; a local directory as it is (its name may hold ``=`` or ``@``)."""
    from merge_proxy.hub import split_revision

    if not source or Path(source).expanduser().exists():
        return source
    return split_revision(source)[0]


def pending(items: Sequence[WorkItem], done: set[tuple[str, str]]) -> list[WorkItem]:
    out = []
    for item in items:
        todo = tuple(b for b in item.benchmarks if (item.mixture.key(), b.task) not in done)
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

    def truth_model(self, source: str) -> tuple[lmms, str]:
        """A checkpoint trained on a mixture: a LoRA adapter is merged at weight 1 (exactly PEFT's
        merge), a full checkpoint is loaded by the backend as is."""
        from merge_proxy.chat_template import apply_chat_template
        from merge_proxy.experts import ExpertSpec, resolve
        from merge_proxy.lmms_model import MergeProxy, default_backend, load_backend, proxy_class

        resolved = resolve(ExpertSpec.parse(source), for_base=True)  # a full one is loaded: tokenizer too
        if resolved.kind == "lora":
            return proxy_class(self.backend)(pretrained=self.recipe.base, experts=f"truth={source}", weights="truth=1",
                              **self._model_args()), resolved.pinned_source
        backend = self.recipe.backend or default_backend(resolved)
        template = self._template  # before the load: a wrong source fails in seconds
        model = load_backend(backend, str(resolved.path), self.recipe.backend_args,
                             want_simple=proxy_class(backend) is MergeProxy)
        if template is not None:
            apply_chat_template(model, template, backend)
        # evaluate() ends with lm.clean(), which deletes the loaded module; keep it for the next
        # benchmark, as MergeProxy.clean does.
        model.clean = gc.collect
        return model, resolved.pinned_source

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
    base = {"source": model.base.source, "pinned": model.base.pinned_source, "revision": model.base.revision,
            "fingerprint": model.base.fingerprint}
    experts = [{"name": e.name, "source": e.source, "pinned": e.pinned_source, "revision": e.revision,
                "fingerprint": e.fingerprint} for e in model.experts]
    return base, experts


def run_items(recipe: Recipe, items: Sequence[WorkItem], journal: Journal, sources: dict[str, str],
              chat_template: str | None = None) -> int:
    """Score the items in this process, appending each result as soon as it exists."""
    from importlib.metadata import version

    from tqdm.auto import tqdm

    evaluator = Evaluator(recipe, sources, chat_template)
    lmms_version = version("lmms-eval")
    total = sum(len(i.benchmarks) for i in items)
    written = 0
    checked = False
    with tqdm(total=total, desc=f"sweep {recipe.name}", unit="score") as bar:
        for item in items:
            started = time.perf_counter()
            if item.model is None:
                model = evaluator.proxy(item.mixture)
                pinned_model = None
            else:
                model, pinned_model = evaluator.truth_model(item.model)
            merge_s = time.perf_counter() - started
            base, experts = _provenance(model) if hasattr(model, "merger") else ({}, [])
            if not checked:  # the commits now merged against those the journal's scores came from
                if item.model is None:
                    check_models(all_records(recipe.output_dir), ModelId.from_record(base),
                                 {e["name"]: ModelId.from_record(e) for e in experts}, recipe.output_dir)
                keep_recipe(recipe)
                checked = True
            for benchmark in item.benchmarks:
                t0 = time.perf_counter()
                score, metrics = evaluator.score(model, benchmark)
                journal.append(JournalRecord(
                    mode=recipe.mode, mixture_id=item.mixture.key(), weights=item.mixture.as_dict(),
                    benchmark=benchmark.task, score=score, metrics=metrics, base=base, experts=experts,
                    model=pinned_model, lmms_eval_version=lmms_version,
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
              sources: dict[str, str] | None = None, base: str | None = None, chat_template: str | None = None) -> int:
    """A SLURM (or submitit local) job: score some mixtures into the shard's own journal file.

    ``shard`` names that file uniquely per submission, so a job of an earlier submission that is
    still running never appends to the same file as a new one (appends from two NFS clients
    interleave). ``sources``, ``base`` and ``chat_template`` are the submitter's pinned ones
    (``repo@sha``), so shards that start hours apart still merge the same commits and prompt alike
    (the journal's settings keep the recipe's own ``chat_template_from``).
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
    done = scored(all_records(out), recipe.mode)
    wanted = set(mixture_keys)
    items = [i for i in candidate_items(recipe, list(sources)) if i.mixture.key() in wanted]
    return run_items(recipe, pending(items, done), shard_journal, sources, chat_template)


def _submit(recipe: Recipe, out: Path, items: Sequence[WorkItem], executor_type: str, shards: int,
            sources: dict[str, str]) -> None:
    try:  # before the sources are pinned
        import submitit  # noqa: F401
    except ImportError:
        raise MissingDependencyError("submitit", "slurm", "executor slurm") from None
    from merge_proxy.experts import pin_source

    pinned = {name: pin_source(source) for name, source in sources.items()}
    base = pin_source(recipe.base)
    if recipe.mode == "proxy":  # a re-published expert (a new commit) is refused before any job is queued
        check_models(all_records(out), ModelId.from_source(base),
                     {n: ModelId.from_source(p) for n, p in pinned.items()}, out)
    template = pin_source(recipe.chat_template_from) if recipe.chat_template_from else None
    logger.info("shards merge base %s and experts %s%s", base, ", ".join(f"{n}={s}" for n, s in pinned.items()),
                f", prompting with the chat template of {template}" if template else "")
    keys = [i.mixture.key() for i in items]
    n = max(1, min(shards, len(keys)))
    chunks = [keys[i::n] for i in range(n)]
    params = dict(recipe.executor.slurm)
    local = executor_type == "submitit-local"
    executor = _local_executor(out, params.get("timeout_min")) if local else _slurm_executor(out, recipe.name, params)
    submission = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    names = [f"shard-{submission}-{i:04d}" for i in range(n)]
    args = ([str(recipe.path)] * n, [str(out)] * n, chunks, names, [pinned] * n, [base] * n, [template] * n)
    jobs: list[Any] = []
    try:
        if local:
            _submit_local(executor, args, params.get("gpus_per_node"), jobs)
        else:
            jobs.extend(executor.map_array(run_shard, *args))
        logger.info("submitted %d job(s): %s", len(jobs), ", ".join(j.job_id for j in jobs))
        failures = _wait(jobs)
    except KeyboardInterrupt:
        _cancel(jobs)
        gather(out)
        raise
    gather(out)
    if failures:
        raise ConfigError(f"{len(failures)} shard job(s) failed ({'; '.join(failures)}); logs in {out / 'submitit'}; "
                          "rerun the same command to finish the remaining work")


def _slurm_executor(out: Path, name: str, params: dict[str, Any]) -> Any:
    """submitit's SLURM executor with the recipe's executor keys in submitit's names."""
    import submitit

    try:
        executor = submitit.AutoExecutor(folder=out / "submitit", cluster="slurm")
    except RuntimeError as err:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise ConfigError(f"cannot submit SLURM jobs from this machine ({err}); run the sweep on a SLURM login "
                          "node, or use --executor local (this process) or submitit-local") from None
    mapped: dict[str, Any] = {"timeout_min": int(params.get("timeout_min", 240))}
    for key, target in (("partition", "slurm_partition"), ("gpus_per_node", "gpus_per_node"),
                        ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb"),
                        ("array_parallelism", "slurm_array_parallelism"), ("account", "slurm_account"),
                        ("qos", "slurm_qos")):
        if key in params:
            mapped[target] = params[key]
    executor.update_parameters(name=f"merge-proxy-{name}", **mapped)
    return executor


def _local_executor(out: Path, timeout: int | None) -> Any:
    """submitit's LocalExecutor itself (only it takes visible_gpus, to place each shard), without a
    time limit unless the recipe sets one: no scheduler asks for one here, and SLURM's 4-hour default
    would stop a long local sweep part-way (submitit then reports a bare KeyboardInterrupt)."""
    import submitit

    executor = submitit.LocalExecutor(folder=out / "submitit")
    executor.update_parameters(timeout_min=_NO_LIMIT_MIN if timeout is None else int(timeout))
    logger.info("local shards run %s", "without a time limit (executor timeout_min sets one)"
                if timeout is None else f"for at most {int(timeout)} min (executor timeout_min)")
    return executor


#: submitit-local's time limit when the recipe sets none: a year.
_NO_LIMIT_MIN = 60 * 24 * 365


def local_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them, else every GPU torch sees.

    Read as CUDA reads it (and torch, ``torch.cuda._parse_visible_devices``): indices up to the first
    entry that is empty, negative or not a number (``-1``: no GPU; ``0,,1``: GPU 0 only), no GPU at
    all when an index repeats; ``GPU-``/``MIG-`` UUIDs are kept as names."""
    import re

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    gpus: list[str] = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.startswith(("GPU-", "MIG-")):
            gpus.append(entry)
            continue
        index = re.match(r"\d+", entry)
        if index is None:
            break
        if str(int(index.group())) in gpus:
            return []
        gpus.append(str(int(index.group())))
    return gpus


def shard_gpus(shards: int, per_shard: int, gpus: Sequence[str]) -> list[tuple[str, ...]]:
    """The GPUs of each local shard, round robin: shard i takes the next ``per_shard`` GPUs, so 8
    shards on an 8-GPU node get one each (more shards than GPUs share them)."""
    if per_shard > len(gpus):
        raise ConfigError(f"executor gpus_per_node: {per_shard}, but this machine shows {len(gpus)} GPU(s) "
                          f"({', '.join(gpus) or 'none'}); lower gpus_per_node or set CUDA_VISIBLE_DEVICES")
    if per_shard == 0:
        return [()] * shards
    return [tuple(gpus[(i * per_shard + k) % len(gpus)] for k in range(per_shard)) for i in range(shards)]


def _submit_local(executor: Any, args: tuple[list, ...], gpus_per_node: int | None, jobs: list[Any]) -> None:
    """One submitit-local job per shard, each on its own GPUs, appended to ``jobs`` as it starts (an
    interrupt part-way cancels those). submitit's local executor sets every job's
    CUDA_VISIBLE_DEVICES to the first gpus_per_node GPUs (none by default: shards on a GPU node ran
    on the CPU), so the devices are given job by job (``visible_gpus``)."""
    import signal

    gpus = local_gpus()
    per_shard = (1 if gpus else 0) if gpus_per_node is None else gpus_per_node
    if per_shard and not all(g.isdigit() for g in gpus):
        raise ConfigError(f"CUDA_VISIBLE_DEVICES names GPUs by UUID ({', '.join(gpus)}); submitit-local places "
                          "shards by GPU index: give indices (e.g. 0,1,2,3), or use --executor local")
    placement = shard_gpus(len(args[0]), per_shard, gpus)
    if per_shard and len(placement) * per_shard > len(gpus):
        logger.warning("%d shards x %d GPU(s) on %d GPU(s): shards share GPUs (each loads its own model); "
                       "pass --shards %d for one per GPU", len(placement), per_shard, len(gpus),
                       max(1, len(gpus) // per_shard))
    # submitit cancels a local job with SIGINT; a submitter started with SIGINT ignored (`cmd &` in a
    # script) would pass that on and make its shards uncancellable: they start with it at default.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        for i, devices in enumerate(placement):
            executor.update_parameters(gpus_per_node=len(devices), visible_gpus=tuple(int(d) for d in devices))
            jobs.append(executor.submit(run_shard, *(a[i] for a in args)))
            logger.info("shard %d of %d on %s", i + 1, len(placement),
                        f"GPU {', '.join(devices)}" if devices else "the CPU (no GPU visible)")
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait(jobs: Sequence[Any]) -> list[str]:
    """Wait for every job; one line per failed job (its error's last line), for one error at the end."""
    failures = []
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - report every failed shard, then fail once
            failures.append(f"job {job.job_id}: {str(err).strip().splitlines()[-1] if str(err).strip() else err}")
    return failures


def _cancel(jobs: Sequence[Any]) -> None:
    """The submitter was interrupted: its jobs go with it (an orphaned shard would keep a GPU busy
    for a sweep nobody waits for). Each job journals per score, so the rerun keeps their work."""
    running = [job for job in jobs if not _finished(job)]
    stuck = []
    for job in running:
        try:
            job.cancel(check=False)
        except OSError:  # scancel missing from this node's PATH
            stuck.append(job.job_id)
    cancelled = [job.job_id for job in running if job.job_id not in stuck]
    if cancelled:
        logger.warning("interrupted: cancelled %d shard job(s) (%s); the scores they journaled are kept, rerun "
                       "the same command to continue", len(cancelled), ", ".join(cancelled))
    if stuck:
        logger.error("could not cancel job(s) %s (no scancel here): cancel them with `scancel %s`",
                     ", ".join(stuck), " ".join(stuck))


def _finished(job: Any) -> bool:
    try:
        return bool(job.done())
    except Exception:  # noqa: BLE001 - sacct unreachable: cancelling a finished job is harmless
        return False


@dataclass(frozen=True)
class SweepPlan:
    recipe: Recipe
    sources: dict[str, str]
    items: list[WorkItem]
    done: int
    total: int


def plan(recipe_path: str | Path, out_dir: str | Path | None = None) -> SweepPlan:
    recipe = load_recipe(recipe_path, output_dir=out_dir)
    sources = expert_sources(recipe)
    items = candidate_items(recipe, list(sources))
    done: set[tuple[str, str]] = set()
    if (recipe.output_dir / JOURNAL_FILE).is_dir():
        raise ConfigError(f"{recipe.output_dir / JOURNAL_FILE} is a directory, where the sweep appends its journal; "
                          "move it away or pass another --out")
    if recipe.output_dir.exists():
        records = all_records(recipe.output_dir)
        check_settings(recipe, records)
        if recipe.mode == "proxy":
            check_models(records, ModelId.from_source(recipe.base),
                         {n: ModelId.from_source(s) for n, s in sources.items()}, recipe.output_dir)
        check_truth_models(records, items, recipe.output_dir)
        done = scored(records, recipe.mode)
    todo = pending(items, done)
    total = sum(len(i.benchmarks) for i in items)
    return SweepPlan(recipe, sources, todo, total - sum(len(i.benchmarks) for i in todo), total)


def run_sweep(recipe_path: str | Path, out_dir: str | Path | None = None, executor: str | None = None,
              shards: int | None = None) -> Journal:
    """Score everything the recipe asks for that the journal does not hold yet."""
    p = plan(recipe_path, out_dir)
    out = p.recipe.output_dir
    # shards an earlier (killed) submitter never gathered; this is the one writer
    journal = gather(out) if out.is_dir() else Journal(out / JOURNAL_FILE)
    logger.info("sweep %s: %d of %d scores done, %d mixtures to go", p.recipe.name, p.done, p.total, len(p.items))
    if not p.items:
        if journal.path.is_file():
            keep_recipe(p.recipe)
        return journal
    kind = executor or p.recipe.executor.type
    if kind == "local":
        if (shards or p.recipe.executor.shards) > 1:
            logger.warning("executor local scores in this process, one mixture after another: %d shards ignored; "
                           "--executor submitit-local runs them as processes, one per GPU",
                           shards or p.recipe.executor.shards)
        run_items(p.recipe, p.items, journal, p.sources)
    else:
        _submit(p.recipe, out, p.items, kind, shards or p.recipe.executor.shards, p.sources)
    return journal
