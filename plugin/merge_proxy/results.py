"""The analysis of a sweep as users reach it: ``merge-proxy report`` and ``merge-proxy push-results``.

A RESULTS argument is a sweep directory (holding journal.jsonl and the recipe.yaml the sweep copied)
or a journal file. Benchmark weights of the aggregate come from that recipe unless given.

A SLURM sweep's shards write their own journals (``OUT/shards/*.jsonl``); the submitter folds them into
journal.jsonl when it gathers, so a sweep that was interrupted (or is still running) can hold scores only
there. :func:`read_results` reads both, so a report never silently leaves those scores out.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_proxy.errors import ConfigError
from merge_proxy.hub import HubOptions, is_repo_id, stale_file_deletes
from merge_proxy.mixture import parse_weights
from merge_proxy.journal import (
    JOURNAL_FILE,
    SHARD_DIR,
    Journal,
    JournalRecord,
    read_with_shards,
    records_digest,
    shards_of,
)

if TYPE_CHECKING:  # report imports scipy and matplotlib: loaded when a report is made
    from merge_proxy.report import ReportResult

logger = logging.getLogger(__name__)

RESULTS_TAGS = ("merge-proxy", "merge-proxy-results", "data-mixture")
#: The dataset configs of a pushed results repo: ``datasets.load_dataset(repo, "proxy")`` reads the
#: journal, ``"truth"`` the truth journal; without them `datasets` mixes every JSON file it finds.
PROXY_CONFIG = {"config_name": "proxy", "data_files": [{"split": "train", "path": "journal.jsonl"}],
                "default": True}
TRUTH_CONFIG = {"config_name": "truth", "data_files": [{"split": "train", "path": "truth.jsonl"}]}
# (No config for report/ranking.csv: `datasets` builds every config of a repo with one builder, the
# JSON one of the journals, so a CSV config fails to load.)

#: The Hub's size categories (datasetcard.md), by upper bound on rows (the proxy journal's).
_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"))


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for a dataset of ``rows`` rows."""
    return next((name for bound, name in _SIZE_CATEGORIES if rows < bound), "10M<n<100M")


@dataclass(frozen=True)
class ResultsInput:
    journal: Path
    recipe: Path | None

    @property
    def directory(self) -> Path:
        return self.journal.parent

    @property
    def shards(self) -> list[Path]:
        return shards_of(self.journal)


def locate(results: str | Path) -> ResultsInput:
    """A sweep directory or a journal file -> the journal and (if there) the sweep's recipe copy.

    A sweep directory whose scores are still all in shard journals (journal.jsonl not written yet) is
    accepted; "no journal" is said only when neither exists.
    """
    path = Path(results)
    journal = path / JOURNAL_FILE if path.is_dir() else path
    inputs = ResultsInput(journal, None)
    if not journal.is_file() and not inputs.shards:
        raise ConfigError(f"no journal at {journal}; pass a sweep output directory or its journal.jsonl")
    recipe = journal.parent / "recipe.yaml"
    return ResultsInput(journal, recipe if recipe.is_file() else None)


def read_results(inputs: ResultsInput) -> list[JournalRecord]:
    """The journal's records, then those only in shard journals (one per key, the main journal's first).

    Scores only in shards are kept, with a warning saying to gather them: a report that dropped them
    would rank an unfinished-looking sweep that is in fact done.
    """
    records, fresh = read_with_shards(inputs.journal)
    if fresh:
        logger.warning("%d score(s) are only in the shard journals under %s (not gathered into %s yet); "
                       "they are included; rerun `merge-proxy sweep` on the recipe to gather them",
                       len(fresh), inputs.directory / SHARD_DIR, inputs.journal.name)
    return records + fresh


def parse_benchmark_weights(text: str) -> dict[str, float]:
    """``TASK=W,TASK=W`` (``;`` works too) -> task -> weight: the mixtures' parser, and weights >= 0."""
    weights = parse_weights(text.replace(";", ","), what="benchmark", example="--weights chartqa=2,gqa=1",
                            name_check=_task_name)
    for task, w in weights.items():
        if w < 0:
            raise ConfigError(f"weight of benchmark {task!r} is {w:g}; use a finite weight >= 0 (0 leaves it out)")
    return weights


def _task_name(name: str, what: str) -> str:
    """lmms-eval task names are free text (``refcoco+_bbox_val``): only a space or nothing is refused."""
    if not name or any(c.isspace() for c in name):
        raise ConfigError(f"invalid {what} {name!r}: write the lmms-eval task name, e.g. --weights chartqa=2,gqa=1")
    return name


def benchmark_weights(inputs: ResultsInput, override: str | None) -> dict[str, float] | None:
    if override:
        return parse_benchmark_weights(override)
    if inputs.recipe is None:
        return None
    import yaml

    data = yaml.safe_load(inputs.recipe.read_text(encoding="utf-8")) or {}
    weights = {}
    for item in (data.get("benchmarks") if isinstance(data, dict) else None) or []:
        item = {"task": item} if isinstance(item, str) else item
        try:
            weights[str(item["task"])] = float(item.get("weight", 1.0))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError(
                f"{inputs.recipe}: benchmark {item!r} is not a task name or {{task: NAME, weight: W}}; repair the "
                "recipe, or give the weights with --weights TASK=W,..."
            ) from None
    return weights or None


def make_report(results: str | Path, truth: str | Path | None, out_dir: str | Path | None,
                weights: str | None = None, title: str | None = None) -> ReportResult:
    from merge_proxy.report import write_report

    inputs = locate(results)
    truth_journal = locate(truth).journal if truth else None
    out = Path(out_dir) if out_dir else inputs.directory / "report"
    return write_report(inputs.journal, truth_journal, out, benchmark_weights(inputs, weights), title)


def check_report_matches(data: dict[str, Any], report: Path, inputs: ResultsInput, truth: Path | None,
                         weights: str | None) -> Path | None:
    """Refuse a push whose journals or --weights differ from those the report in ``report`` was made
    with: the card is built from that report, so pushing other inputs beside it would contradict it.
    Returns the truth journal to push (the report's, when --truth is not given)."""
    from merge_proxy.analysis import normalize_benchmark_weights

    recorded = data.get("inputs") or {}
    redo = "rerun `merge-proxy report` with the inputs to push, or push without --report"
    if recorded.get("proxy_sha256") and records_digest(read_results(inputs)) != recorded["proxy_sha256"]:
        raise ConfigError(f"the report in {report} was made from other proxy scores ({recorded['proxy_journal']} "
                          f"then) than {inputs.journal} holds now; {redo}")
    report_truth = recorded.get("truth_journal")
    if truth is not None and (report_truth is None or recorded.get("truth_sha256")
                              != records_digest(read_results(ResultsInput(truth, None)))):
        raise ConfigError(f"--truth {truth} does not hold the truth scores of the report in {report} "
                          f"({report_truth or 'none'} then); {redo}")
    if weights:
        given = normalize_benchmark_weights(parse_benchmark_weights(weights), data["benchmarks"])
        have = data["benchmark_weights"]
        if any(abs(given[b] - have.get(b, 0.0)) > 1e-9 for b in given):
            raise ConfigError(f"--weights {weights} differ from the weights of the report in {report} "
                              f"({', '.join(f'{b}={w:.3g}' for b, w in have.items())}); drop --weights (the card "
                              f"uses the report's) or {redo}")
    if truth is None and report_truth is not None:
        if not Path(report_truth).is_file():
            raise ConfigError(f"the report in {report} compared with truth journal {report_truth}, which is gone; "
                              f"pass --truth with it, or {redo}")
        return Path(report_truth)
    return truth


def push_results(results: str | Path, repo_id: str, truth: str | Path | None = None,
                 report_dir: str | Path | None = None, private: bool = True, weights: str | None = None,
                 hub: HubOptions | None = None) -> str:
    """One dataset-repo commit: journals, recipe, report, analysis, plots and a result card.

    The card is rendered from the pushed report's analysis.json (its weights, title and truth), so it
    always agrees with report/report.md beside it; with ``report_dir`` the inputs must match that report.
    """
    from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData

    from merge_proxy.hub import explain_error
    from merge_proxy.report import RANKING_CSV, load_analysis, result_card_context
    from merge_proxy.resources import card_template

    if not is_repo_id(repo_id):  # before the report is computed
        raise ConfigError(f"--repo {repo_id!r} is not a Hub repo id; pass --repo ORG/NAME (a dataset repo)")
    hub = hub or HubOptions()
    inputs = locate(results)
    truth_journal = locate(truth).journal if truth else None
    with tempfile.TemporaryDirectory(prefix="merge-proxy-results-") as tmp:
        if report_dir is None:
            report = make_report(results, truth, Path(tmp) / "report", weights).out_dir
            data = load_analysis(report)
        else:
            report = Path(report_dir)
            data = load_analysis(report)
            truth_journal = check_report_matches(data, report, inputs, truth_journal, weights)
        records = read_results(inputs)
        journal_copy = Path(tmp) / JOURNAL_FILE  # with the shards' scores, as the report read them
        Journal(journal_copy).append_many(records)
        if truth_journal is not None:
            truth_copy = Path(tmp) / "truth.jsonl"
            Journal(truth_copy).append_many(read_results(ResultsInput(truth_journal, None)))
        context = result_card_context(data, records, ranking_csv=(report / RANKING_CSV).is_file())
        context["recipe"] = inputs.recipe.read_text(encoding="utf-8").strip() if inputs.recipe else None
        context.update(has_truth=truth_journal is not None, repo_id=repo_id)
        configs = [PROXY_CONFIG] + ([TRUTH_CONFIG] if truth_journal is not None else [])
        card_data = DatasetCardData(pretty_name=context["title"], tags=list(RESULTS_TAGS), configs=configs,
                                    size_categories=[size_category(len(records))])
        card = DatasetCard.from_template(card_data, template_str=card_template("result"), **context)
        ops = [CommitOperationAdd(JOURNAL_FILE, str(journal_copy)),
               CommitOperationAdd("README.md", str(card).encode())]
        if truth_journal is not None:
            ops.append(CommitOperationAdd("truth.jsonl", str(truth_copy)))
        if inputs.recipe:
            ops.append(CommitOperationAdd("recipe.yaml", str(inputs.recipe)))
        for f in sorted(report.iterdir()):
            if f.is_file():
                ops.append(CommitOperationAdd(f"report/{f.name}", str(f)))
        api = hub.api()
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            # the repo then holds exactly this push: no plot or truth.jsonl of an earlier one stays
            parent, stale = stale_file_deletes(api, repo_id, None, {op.path_in_repo for op in ops}, "dataset")
            info = api.create_commit(repo_id, operations=[*ops, *stale], repo_type="dataset",
                                     parent_commit=parent, commit_message="merge-proxy results")
        except Exception as err:  # noqa: BLE001
            raise explain_error(err, repo_id, None, hub) from err
    logger.info("pushed %d files to dataset %s", len(ops), repo_id)
    return info.commit_url
