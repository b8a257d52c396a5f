"""The sweep report: ``report.md`` for people, ``analysis.json`` for programs, and the plots.

:func:`write_report` reads the proxy journal (and, when given, the truth journal), analyses them with
:mod:`merge_proxy.analysis`, and writes everything into a staging directory that is renamed into place
only when complete (:func:`merge_proxy.atomic.atomic_output_dir`): an interrupted report never leaves a
directory that looks finished. :func:`result_card_context` gives the Hub result card
(``hub_cards/result.md.j2``) what it needs, so the card and the report always agree.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from merge_proxy.analysis import AGGREGATE, Analysis, BenchmarkAnalysis, analyze
from merge_proxy.atomic import atomic_output_dir, check_new_output_dir
from merge_proxy.errors import ConfigError
from merge_proxy.journal import Journal, JournalRecord

logger = logging.getLogger(__name__)

REPORT_MD = "report.md"
ANALYSIS_JSON = "analysis.json"

_BASELINE_LABELS = {"uniform": "uniform mixture", "best_single_expert": "best single expert"}

REPORT_TEMPLATE = """\
# {{ title }}

{{ n_mixtures }} mixture(s) of {{ domains | map("code") | join(", ") }} scored by merged proxies on \
{{ benchmarks | length }} benchmark(s); the aggregate is the weighted mean \
{%- for b in benchmarks %} {{ b | code }} × {{ benchmark_weights[b] | num(3) }}{{ "," if not loop.last }}{% endfor %}.
{%- if truth %} {{ truth.n_matched }} of them were also trained for real (truth).{% endif %}

## Recommended mixture

**`{{ rec.mixture_id }}`**: aggregate proxy score {{ rec.aggregate | num }}, rank 1 of {{ n_ranked }}.
{%- if rec.truth_aggregate is not none %} Trained for real it scores {{ rec.truth_aggregate | num }} \
(rank {{ rec.truth_rank }} of {{ n_truth_ranked }} trained mixtures).{% endif %}

| domain | weight |
|---|---|
{% for d in domains %}| {{ d | code }} | {{ rec.weights[d] | num }} |
{% endfor %}
## Baselines

| | mixture | proxy aggregate | proxy rank |{% if truth %} truth aggregate | truth rank |{% endif %}
|---|---|---|---|{% if truth %}---|---|{% endif %}
| recommended | `{{ rec.mixture_id }}` | {{ rec.aggregate | num }} | {{ rec.rank }} |{% if truth %} {{ rec.truth_aggregate | num }} | {{ rec.truth_rank | opt }} |{% endif %}
{% for b in baselines %}| {{ b.label }} | {% if b.mixture_id %}`{{ b.mixture_id }}`{% else %}not in the sweep{% endif %} | {{ b.aggregate | num }} | {{ b.rank | opt }} |{% if truth %} {{ b.truth_aggregate | num }} | {{ b.truth_rank | opt }} |{% endif %}
{% endfor %}
## Ranking

All mixtures by aggregate proxy score{% if truth %}, with the truth aggregate where trained{% endif %}.

| rank | {% for d in domains %}{{ d }} | {% endfor %}{% for b in benchmarks %}{{ b }} | {% endfor %}aggregate |{% if truth %} truth | truth rank |{% endif %}
|---|{% for d in domains %}---|{% endfor %}{% for b in benchmarks %}---|{% endfor %}---|{% if truth %}---|---|{% endif %}
{% for m in mixtures %}| {{ m.rank | opt }} | {% for d in domains %}{{ m.weights[d] | num(3) }} | {% endfor %}{% for b in benchmarks %}{{ m.scores.get(b) | num }} | {% endfor %}{{ m.aggregate | num }} |{% if truth %} {{ m.truth_aggregate | num }} | {{ m.truth_rank | opt }} |{% endif %}
{% endfor %}
{%- if incomplete %}
Left out of the aggregate ranking (a weighted benchmark has no score; rerun the sweep to finish them):
{% for m, missing in incomplete.items() %}
- `{{ m }}`: no score on {{ missing | map("code") | join(", ") }}
{%- endfor %}
{% endif %}
{%- if truth %}
## Proxy vs truth

{{ truth.n_matched }} mixture(s) scored by both. Intervals: {{ (truth.confidence * 100) | round | int }}% \
percentile bootstrap over mixtures ({{ truth.n_boot }} resamples, seed {{ truth.seed }}).
{%- if truth.aggregate_benchmarks | length < benchmarks | length %} The compared aggregate uses only \
{{ truth.aggregate_benchmarks | map("code") | join(", ") }} (truth lacks the others).{% endif %}
{% if truth.only_proxy %}
Without a truth run (left out of the comparison): {{ truth.only_proxy | map("code") | join(", ") }}.
{% endif %}
{%- if truth.only_truth %}
Truth runs of mixtures not in the proxy journal (left out): {{ truth.only_truth | map("code") | join(", ") }}.
{% endif %}
| | n | Spearman | Kendall τ-b | Pearson | top-1 | top-3 | regret |
|---|---|---|---|---|---|---|---|
{% for row in comparisons %}| {{ row.benchmark }} | {{ row.n }} | {{ row.spearman | ci }} | {{ row.kendall | ci }} | {{ row.pearson | ci }} | {{ row.top1_hit | hit }} | {{ row.top3_hit | hit }} | {{ row.regret | num }} |
{% endfor %}
top-1: the proxy's best mixture is the truth's best; top-3: the truth's best is in the proxy's top 3; \
regret: the truth's best score minus the truth score of the proxy's pick.
{%- if truth.aggregate.n < 10 %} With {{ truth.aggregate.n }} mixtures the intervals are rough: a resample holds few distinct mixtures, and two distinct points always correlate at ±1.{% endif %}
{% endif %}
{%- if plots %}
## Plots
{% for p in plots %}
![{{ p.caption }}]({{ p.file }})
{% endfor %}
{%- endif %}
"""


@dataclass(frozen=True)
class ReportResult:
    """Where the report went, and the analysis it shows (to print a summary without rereading)."""

    out_dir: Path
    report: Path
    analysis_json: Path
    plots: tuple[Path, ...]
    analysis: Analysis


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _opt(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _ci(corr) -> str:
    if corr is None or not math.isfinite(corr.value):
        return "n/a"
    interval = f"[{_num(corr.low, 2)}, {_num(corr.high, 2)}]" if math.isfinite(corr.low) else "[n/a]"
    return f"{corr.value:.3f} {interval}"


def _hit(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _environment():
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(num=_num, opt=_opt, ci=_ci, hit=_hit, code=lambda s: f"`{s}`")
    return env


_CAPTIONS = {
    "score_vs_weight.png": "proxy score against the mixture weight",
    "ternary_aggregate.png": "aggregate proxy score over the simplex",
    "proxy_vs_truth.png": "proxy against truth",
}


def render_report(analysis: Analysis, plots: Iterable[str | Path] = (), title: str | None = None) -> str:
    """The Markdown of ``report.md``; ``plots`` are linked by file name (they sit next to it)."""
    truth = analysis.truth
    comparisons: list[BenchmarkAnalysis] = [truth.aggregate, *truth.benchmarks] if truth else []
    context = {
        "title": title or default_title(analysis),
        "domains": analysis.domains,
        "benchmarks": analysis.benchmarks,
        "benchmark_weights": analysis.benchmark_weights,
        "n_mixtures": len(analysis.mixtures),
        "n_ranked": len(analysis.rankings[AGGREGATE]),
        "n_truth_ranked": sum(m.truth_rank is not None for m in analysis.mixtures),
        "rec": analysis.recommended,
        "baselines": [
            {**asdict(b), "label": _BASELINE_LABELS.get(b.name, b.name)} for b in analysis.baselines
        ],
        "mixtures": analysis.mixtures,
        "incomplete": analysis.incomplete,
        "truth": truth,
        "comparisons": comparisons,
        "plots": [{"file": Path(p).name, "caption": _CAPTIONS.get(Path(p).name, Path(p).stem)} for p in plots],
    }
    return _environment().from_string(REPORT_TEMPLATE).render(**context)


def default_title(analysis: Analysis) -> str:
    return f"Data mixture search over {', '.join(analysis.domains)}"


def _read(path: str | Path, what: str) -> list[JournalRecord]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no {what} journal at {path}; pass the journal.jsonl the sweep wrote")
    records = Journal(path).records()
    if not records:
        raise ConfigError(f"the {what} journal {path} is empty; run the sweep (or the truth evaluations) first")
    return records


def write_report(
    proxy_journal: str | Path,
    truth_journal: str | Path | None,
    out_dir: str | Path,
    benchmark_weights: Mapping[str, float] | None = None,
    title: str | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> ReportResult:
    """Analyse the journals and write report.md, analysis.json and the plots into ``out_dir``, atomically.

    ``out_dir`` must not exist or be empty (a report is never overwritten). The proxy journal's ``proxy``
    records and the truth journal's ``truth`` records are used, so one journal may hold both.
    """
    out = Path(out_dir).absolute()
    from merge_proxy.plots import require_matplotlib, write_plots

    check_new_output_dir(out)  # before the bootstrap, not after
    require_matplotlib()
    proxy_records = _read(proxy_journal, "proxy")
    truth_records = _read(truth_journal, "truth") if truth_journal is not None else None
    analysis = analyze(proxy_records, truth_records, benchmark_weights, n_boot=n_boot, seed=seed,
                       confidence=confidence)
    with atomic_output_dir(out) as stage:
        plot_paths = write_plots(analysis, stage)
        names = [p.name for p in plot_paths]
        data = {
            **analysis.to_dict(),
            "title": title or default_title(analysis),
            "inputs": {"proxy_journal": str(proxy_journal),
                       "truth_journal": None if truth_journal is None else str(truth_journal)},
            "plots": names,
        }
        (stage / ANALYSIS_JSON).write_text(
            json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
        (stage / REPORT_MD).write_text(render_report(analysis, names, title), encoding="utf-8")
    logger.info("report written to %s (recommended: %s)", out, analysis.recommended.mixture_id)
    return ReportResult(out_dir=out, report=out / REPORT_MD, analysis_json=out / ANALYSIS_JSON,
                        plots=tuple(out / n for n in names), analysis=analysis)


def _experts(records: Iterable[JournalRecord], order: tuple[str, ...]) -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    records = list(records)
    # truth records list the trained checkpoint as an "expert" named truth; the card's experts are the proxy's
    proxy_records = [r for r in records if r.mode == "proxy"] or records
    for r in proxy_records:
        for e in r.experts or []:
            name = str(e.get("name", ""))
            pinned = str(e.get("pinned") or e.get("source") or "")
            if (name, pinned) in seen:
                continue
            revision = e.get("revision")
            seen[(name, pinned)] = {
                "name": name, "source": e.get("source"), "pinned": pinned, "revision": revision,
                # the shipped result.md.j2 prints ``sha``; a local expert has no commit to show
                "sha": revision or "local",
            }
    names = [k[0] for k in seen]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        logger.warning("the journal used different sources for expert(s) %s; the card lists each",
                       ", ".join(clashes))
    rank = {d: i for i, d in enumerate(order)}
    return sorted(seen.values(), key=lambda e: (rank.get(e["name"], len(rank)), e["name"], e["pinned"]))


def result_card_context(
    analysis: Analysis, records: Iterable[JournalRecord], title: str | None = None
) -> dict[str, Any]:
    """The context of ``hub_cards/result.md.j2``: title, recommended, experts, correlations, and more.

    ``experts`` comes from the records' ``experts`` field (what the sweep really merged, pinned), as
    dicts with name, source, pinned, revision (and ``sha``, the revision or ``local``, which the shipped
    template prints). ``correlations`` is empty without truth, aggregate first otherwise; a NaN statistic
    stays NaN (the template prints ``nan``) rather than looking like a measured 0.
    """
    records = list(records)
    rec = analysis.recommended
    correlations = []
    if analysis.truth is not None:
        for comp in (analysis.truth.aggregate, *analysis.truth.benchmarks):
            row: dict[str, Any] = {"benchmark": comp.benchmark, "n": comp.n}
            for method, corr in comp.correlations.items():
                row[method] = corr.value
                row[f"{method}_low"] = corr.low
                row[f"{method}_high"] = corr.high
            row.update(top1_hit=comp.top1_hit, top3_hit=comp.top3_hit, regret=comp.regret)
            correlations.append(row)
    base = next((r.base for r in records if r.base and r.mode == "proxy"), None) or \
        next((r.base for r in records if r.base), {})
    return {
        "title": title or default_title(analysis),
        "recommended": {
            "mixture_id": rec.mixture_id, "weights": dict(rec.weights), "score": rec.aggregate,
            "truth_score": rec.truth_aggregate,
        },
        "experts": _experts(records, analysis.domains),
        "base": dict(base),
        "benchmarks": list(analysis.benchmarks),
        "benchmark_weights": dict(analysis.benchmark_weights),
        "n_mixtures": len(analysis.mixtures),
        "baselines": [asdict(b) for b in analysis.baselines],
        "correlations": correlations,
        "confidence": analysis.truth.confidence if analysis.truth else None,
        "n_boot": analysis.truth.n_boot if analysis.truth else None,
    }
