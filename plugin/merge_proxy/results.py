"""The analysis of a sweep as users reach it: ``merge-proxy report`` and ``merge-proxy push-results``.

A RESULTS argument is a sweep directory (holding journal.jsonl and the recipe.yaml the sweep copied)
or a journal file. Benchmark weights of the aggregate come from that recipe unless given.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from merge_proxy.errors import ConfigError
from merge_proxy.hub import HubOptions

logger = logging.getLogger(__name__)

RESULTS_TAGS = ("merge-proxy", "merge-proxy-results", "data-mixture")


@dataclass(frozen=True)
class ResultsInput:
    journal: Path
    recipe: Path | None

    @property
    def directory(self) -> Path:
        return self.journal.parent


def locate(results: str | Path) -> ResultsInput:
    """A sweep directory or a journal file -> the journal and (if there) the sweep's recipe copy."""
    path = Path(results)
    journal = path / "journal.jsonl" if path.is_dir() else path
    if not journal.is_file():
        raise ConfigError(f"no journal at {journal}; pass a sweep output directory or its journal.jsonl")
    recipe = journal.parent / "recipe.yaml"
    return ResultsInput(journal, recipe if recipe.is_file() else None)


def benchmark_weights(inputs: ResultsInput, override: str | None) -> dict[str, float] | None:
    if override:
        from merge_proxy.mixture import parse_weights

        return parse_weights(override)
    if inputs.recipe is None:
        return None
    import yaml

    data = yaml.safe_load(inputs.recipe.read_text(encoding="utf-8")) or {}
    weights = {}
    for item in data.get("benchmarks") or []:
        item = {"task": item} if isinstance(item, str) else item
        weights[str(item["task"])] = float(item.get("weight", 1.0))
    return weights or None


def make_report(results: str | Path, truth: str | Path | None, out_dir: str | Path | None,
                weights: str | None = None, title: str | None = None):
    from merge_proxy.report import write_report

    inputs = locate(results)
    truth_journal = locate(truth).journal if truth else None
    out = Path(out_dir) if out_dir else inputs.directory / "report"
    return write_report(inputs.journal, truth_journal, out, benchmark_weights(inputs, weights), title)


def push_results(results: str | Path, repo_id: str, truth: str | Path | None = None,
                 report_dir: str | Path | None = None, private: bool = True, weights: str | None = None,
                 hub: HubOptions | None = None) -> str:
    """One dataset-repo commit: journals, recipe, report, analysis, plots and a result card."""
    from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData

    from merge_proxy.hub import explain_error
    from merge_proxy.journal import Journal
    from merge_proxy.report import result_card_context
    from merge_proxy.resources import card_template

    hub = hub or HubOptions()
    inputs = locate(results)
    truth_input = locate(truth) if truth else None
    records = Journal(inputs.journal).records()
    with tempfile.TemporaryDirectory(prefix="merge-proxy-results-") as tmp:
        report = Path(report_dir) if report_dir else None
        if report is None or not (report / "report.md").is_file():
            result = make_report(results, truth, Path(tmp) / "report", weights)
            report, analysis = result.out_dir, result.analysis
        else:
            from merge_proxy.analysis import analyze

            truth_records = Journal(truth_input.journal).records() if truth_input else None
            analysis = analyze([r for r in records if r.mode == "proxy"],
                               [r for r in truth_records if r.mode == "truth"] if truth_records else None,
                               benchmark_weights(inputs, weights))
        context = result_card_context(analysis, records)
        context["recipe"] = inputs.recipe.read_text(encoding="utf-8").strip() if inputs.recipe else None
        card = DatasetCard.from_template(DatasetCardData(tags=list(RESULTS_TAGS)),
                                         template_str=card_template("result"), **context)
        ops = [CommitOperationAdd("journal.jsonl", str(inputs.journal)),
               CommitOperationAdd("README.md", str(card).encode())]
        if truth_input:
            ops.append(CommitOperationAdd("truth.jsonl", str(truth_input.journal)))
        if inputs.recipe:
            ops.append(CommitOperationAdd("recipe.yaml", str(inputs.recipe)))
        for f in sorted(report.iterdir()):
            if f.is_file():
                ops.append(CommitOperationAdd(f"report/{f.name}", str(f)))
        api = hub.api()
        try:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            info = api.create_commit(repo_id, operations=ops, repo_type="dataset",
                                     commit_message="merge-proxy results")
        except Exception as err:  # noqa: BLE001
            raise explain_error(err, repo_id, None, hub) from err
    logger.info("pushed %d files to dataset %s", len(ops), repo_id)
    return info.commit_url
