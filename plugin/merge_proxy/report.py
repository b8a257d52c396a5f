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
from merge_proxy.jsonfiles import read_json
from merge_proxy.errors import ConfigError
from merge_proxy.journal import JournalRecord, records_digest
from merge_proxy.listing import head, some

logger = logging.getLogger(__name__)

REPORT_MD = "report.md"
ANALYSIS_JSON = "analysis.json"
RANKING_CSV = "ranking.csv"
#: report.md's ranking table shows this many mixtures (then the lower-ranked trained ones); a sweep of
#: thousands would otherwise make a Markdown file of megabytes. ranking.csv holds every mixture.
RANKING_ROWS = 50
#: Mixture ids a sentence of the report (or the card) names before counting the rest.
LISTED = 20

_BASELINE_LABELS = {"uniform": "uniform mixture", "best_single_expert": "best single expert"}

REPORT_TEMPLATE = """\
# {{ title }}

{{ n_mixtures }} mixture(s) of {{ domains | map("code") | join(", ") }} scored by merged proxies on \
{{ benchmarks | length }} benchmark(s); the aggregate is the weighted mean \
{%- for b in benchmarks %} {{ b | code }} × {{ benchmark_weights[b] | num(3) }}{{ "," if not loop.last }}{% endfor %}.
{%- if truth %} {{ truth.n_matched }} of them were also trained for real (truth).{% endif %}

## Recommended mixture

**`{{ rec.mixture_id }}`**: aggregate proxy score {{ rec.aggregate | num }}, rank 1 of {{ n_ranked }}.
{%- if tied | length > 1 %}

**Tie: {{ tied | length }} mixtures share the best aggregate proxy score:** {{ tied | ids }}. \
The proxy cannot choose between them; `{{ rec.mixture_id }}` is shown only because its id sorts first. \
Choose among them on other grounds, or train each{% if truth %} (their truth is under "Proxy vs truth"){% endif %}.
{%- elif rec.truth_aggregate is not none %} Trained for real it scores {{ rec.truth_aggregate | num }} \
(rank {{ rec.truth_rank }} of {{ n_truth_ranked }} trained mixtures{% if truth_partial %}; {{ truth_partial }}{% endif %}).
{%- elif truth %} **Not trained:** no truth run scores it on every compared benchmark, so whether it \
beats the trained mixtures is unknown; train it to check the recommendation.{% endif %}

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

{% if ranking_gap -%}
The top {{ ranking_top }} of {{ n_mixtures }} mixtures by aggregate proxy score\
{%- if truth %}, then every lower-ranked mixture that was trained, with its truth aggregate{% endif %}; \
`{{ ranking_csv }}` holds all {{ n_mixtures }}.
{%- else -%}
All mixtures by aggregate proxy score{% if truth %}, with the truth aggregate where trained{% endif %} \
(also in `{{ ranking_csv }}`).
{%- endif %}

| rank | {% for d in domains %}{{ d }} | {% endfor %}{% for b in benchmarks %}{{ b }} | {% endfor %}aggregate |{% if truth %} truth | truth rank |{% endif %}
|---|{% for d in domains %}---|{% endfor %}{% for b in benchmarks %}---|{% endfor %}---|{% if truth %}---|---|{% endif %}
{% for m in ranking_rows %}{% if m is none %}{{ gap_row }}
{% else %}| {{ m.rank | opt }} | {% for d in domains %}{{ m.weights[d] | num(3) }} | {% endfor %}{% for b in benchmarks %}{{ m.scores.get(b) | num }} | {% endfor %}{{ m.aggregate | num }} |{% if truth %} {{ m.truth_aggregate | num }} | {{ m.truth_rank | opt }} |{% endif %}
{% endif %}{% endfor %}
{%- if incomplete %}
Left out of the aggregate ranking (a weighted benchmark has no score; rerun the sweep to finish them):
{% for m, missing in incomplete_named %}
- `{{ m }}`: no score on {{ missing | map("code") | join(", ") }}
{%- endfor %}
{%- if incomplete_more %}
- and {{ incomplete_more }} more (`analysis.json` lists every one under `incomplete`)
{%- endif %}
{% endif %}
## Best mixture per benchmark

| benchmark | best proxy score | best mixture(s) | top 3 |
|---|---|---|---|
{% for row in per_benchmark %}| {{ row.benchmark }} | {{ row.score | num }} | {{ row.best | picks }} | {{ row.top3 | join(", ") }} |
{% endfor %}
{%- if truth %}
## Proxy vs truth

{{ truth.n_matched }} mixture(s) scored by both{% if truth.same_model %}, {{ truth.n_matched - truth.same_model | length }} compared{% endif %}. Intervals: {{ (truth.confidence * 100) | round | int }}% \
percentile bootstrap over mixtures ({{ truth.n_boot }} resamples, seed {{ truth.seed }}).
{%- if truth_partial %} **Different benchmark sets:** {{ truth_partial }}.{% endif %}
{% if truth.same_model %}
Left out of the comparison: {{ truth.same_model | length }} single-expert mixture(s) whose truth model is the \
expert itself, {{ truth.same_model | ids }}: their proxy is that same model (one expert at weight 1), so proxy \
and truth agree by construction. Their truth scores still count in the ranking, the baselines and the \
judgement of the recommendation below.
{% endif %}
{%- if truth.only_proxy %}
Without a truth run (left out of the comparison): {{ truth.only_proxy | length }} mixture(s), {{ truth.only_proxy | ids }}.
{% endif %}
{%- if truth.only_truth %}
Truth runs of mixtures not in the proxy journal (left out): {{ truth.only_truth | ids }}.
{% endif %}
{%- if check %}
**The recommendation against truth:** {% if check.trained -%}
{{ check.mixture_ids | ids }} {{ "was" if check.mixture_ids | length == 1 else "were all" }} \
trained: {{ "truth aggregate" if check.mixture_ids | length == 1 else "mean truth aggregate" }} {{ check.truth_aggregate | num }}; against the best of the {{ check.n_trained }} trained \
mixtures ({{ check.truth_best | ids }}): top-1 {{ check.top1_hit | hit }}, \
top-3 {{ check.top3_hit | hit }}, regret {{ check.regret | num }}.
{%- elif check.mixture_ids | length == 1 -%}
**not trained** ({{ check.untrained | ids }} has no truth aggregate): whether it beats \
the {{ check.n_trained }} trained mixtures is unknown, so top-1 and regret are n/a{% if check.top3_hit is not none %} (top-3 over the trained mixtures: {{ check.top3_hit | hit }}){% endif %}. \
The table below judges the proxy's best *among trained mixtures*, not the recommendation.
{%- else -%}
**not all trained**: of the {{ check.mixture_ids | length }} mixtures tied for the best proxy score, \
{{ check.untrained | ids }} {{ "has" if check.untrained | length == 1 else "have" }} no \
truth aggregate, so whether the proxy's pick beats the {{ check.n_trained }} trained mixtures is unknown: top-1 \
and regret are n/a{% if check.top3_hit is not none %} (top-3 over the trained mixtures: {{ check.top3_hit | hit }}){% endif %}. \
The table below judges the proxy's best *among trained mixtures*, not the recommendation.
{%- endif %}
{% endif %}
{%- if truth.aggregate.n == 0 and truth.same_model and truth.same_model | length == truth.n_matched %}
Every trained mixture is a single expert scored as its own truth: there is no mixture to compare the \
proxy with; train models on mixtures (the truth recipes' `truth:` entries) to judge it.
{% elif truth.aggregate.n == 0 %}
No mixture has truth on every weighted benchmark ({{ truth.aggregate_benchmarks | map("code") | join(", ") }}): \
the aggregate is not compared; the rows per benchmark are.
{% endif %}
| | n | Spearman | Kendall τ-b | Pearson | best among trained mixtures (proxy) | top-1 | top-3 | regret |
|---|---|---|---|---|---|---|---|---|
{% for row in comparisons %}| {{ row.benchmark }} | {{ row.n }} | {{ row.spearman | ci }} | {{ row.kendall | ci }} | {{ row.pearson | ci }} | {{ row.proxy_best_tied | picks }} | {{ row.top1_hit | hit }} | {{ row.top3_hit | hit }} | {{ row.regret | num }} |
{% endfor %}
{%- if truth.benchmarks | length > 1 %}
Mean of the {{ truth.benchmarks | length }} per-benchmark correlations (as *Merge to Mix* reports them): \
Spearman {{ truth.mean_over_benchmarks.spearman | num(3) }}, Kendall {{ truth.mean_over_benchmarks.kendall | num(3) }}, \
Pearson {{ truth.mean_over_benchmarks.pearson | num(3) }}.
{% endif %}
Over the trained mixtures only: top-1: the proxy's best among them is the truth's best; top-3: the \
truth's best is in the proxy's top 3 of them; regret: the truth's best score minus the truth score of \
the proxy's pick. When the proxy's best is tied, the pick is any of the tied mixtures with equal chance: \
top-1 and top-3 are then hit probabilities and regret an expectation.
{%- if 0 < truth.aggregate.n < 10 %} With {{ truth.aggregate.n }} mixtures the intervals are rough: a resample holds few distinct mixtures, and two distinct points always correlate at ±1.{% endif %}
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


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _ci_text(value: float | None, low: float | None, high: float | None) -> str:
    """``0.871 [0.62, 0.97]``; n/a for an undefined statistic (NaN in memory, null in analysis.json)."""
    if not _finite(value):
        return "n/a"
    interval = f"[{_num(low, 2)}, {_num(high, 2)}]" if _finite(low) else "[n/a]"
    return f"{value:.3f} {interval}"


def _ci(corr) -> str:
    return "n/a" if corr is None else _ci_text(corr.value, corr.low, corr.high)


def _hit(value: float | None) -> str:
    """yes / no for a certain hit or miss; the probability when ties made it uncertain."""
    if value is None:
        return "n/a"
    if value in (0.0, 1.0):
        return "yes" if value else "no"
    return f"{value:.2f} (tie)"


def _picks(mixtures) -> str:
    """The proxy's pick, or every mixture of a tie (a tie is the pick, not its first by name)."""
    if not mixtures:
        return "n/a"
    if len(mixtures) == 1:
        return f"`{mixtures[0]}`"
    return f"tie of {len(mixtures)}: " + _ids(mixtures)


def _code(text: str) -> str:
    return f"`{text}`"


def _ids(items, limit: int = LISTED) -> str:
    """Mixture ids as code, the first ``limit`` named and the rest counted."""
    return some(list(items), limit, _code)


def _environment():
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.filters.update(num=_num, opt=_opt, ci=_ci, hit=_hit, picks=_picks, code=_code, ids=_ids)
    return env


def truth_partial_note(analysis: Analysis) -> str | None:
    """When truth lacks a weighted benchmark, the proxy and truth aggregates average different sets:
    a sentence saying which, else None."""
    truth = analysis.truth
    if truth is None:
        return None
    weighted = [b for b, w in analysis.benchmark_weights.items() if w > 0]
    if set(truth.aggregate_benchmarks) == set(weighted):
        return None
    lacking = [b for b in weighted if b not in truth.aggregate_benchmarks]
    return (f"truth has no {', '.join(f'`{b}`' for b in lacking)} score, so the truth aggregate averages only "
            f"{', '.join(f'`{b}`' for b in truth.aggregate_benchmarks)} while the proxy's recommendation "
            f"averages {', '.join(f'`{b}`' for b in weighted)}")


def _per_benchmark(analysis: Analysis) -> list[dict[str, Any]]:
    """Best mixture(s) and top 3 of each benchmark, from the proxy's per-benchmark rankings."""
    rows = []
    for b in analysis.benchmarks:
        best = analysis.best.get(b, ())
        scores = {m.mixture_id: m.scores[b] for m in analysis.mixtures if b in m.scores}
        top3 = [f"`{m}` ({_num(scores[m])})" for m in analysis.rankings.get(b, ())[:3]]
        rows.append({"benchmark": b, "best": best, "score": scores[best[0]] if best else None, "top3": top3})
    return rows


_CAPTIONS = {
    "score_vs_weight.png": "proxy score against the mixture weight",
    "ternary_aggregate.png": "aggregate proxy score over the simplex",
    "score_vs_domain_weights.png": "aggregate proxy score against each domain's weight",
    "proxy_vs_truth.png": "proxy against truth",
}


def render_report(analysis: Analysis, plots: Iterable[str | Path] = (), title: str | None = None) -> str:
    """The Markdown of ``report.md``; ``plots`` are linked by file name (they sit next to it)."""
    truth = analysis.truth
    comparisons: list[BenchmarkAnalysis] = [truth.aggregate, *truth.benchmarks] if truth else []
    incomplete_named, incomplete_more = head(analysis.incomplete.items(), LISTED)
    context = {
        "title": title or default_title(analysis),
        "domains": analysis.domains,
        "benchmarks": analysis.benchmarks,
        "benchmark_weights": analysis.benchmark_weights,
        "n_mixtures": len(analysis.mixtures),
        "n_ranked": len(analysis.rankings[AGGREGATE]),
        "n_truth_ranked": sum(m.truth_rank is not None for m in analysis.mixtures),
        "rec": analysis.recommended,
        "tied": analysis.best[AGGREGATE],
        "check": truth.recommendation if truth else None,
        "truth_partial": truth_partial_note(analysis),
        "per_benchmark": _per_benchmark(analysis),
        "baselines": [
            {**asdict(b), "label": _BASELINE_LABELS.get(b.name, b.name)} for b in analysis.baselines
        ],
        **_ranking_rows(analysis),
        "incomplete": analysis.incomplete,
        "incomplete_named": incomplete_named,
        "incomplete_more": incomplete_more,
        "truth": truth,
        "comparisons": comparisons,
        "plots": [{"file": Path(p).name, "caption": _CAPTIONS.get(Path(p).name, Path(p).stem)} for p in plots],
    }
    return _environment().from_string(REPORT_TEMPLATE).render(**context)


def _ranking_rows(analysis: Analysis) -> dict[str, Any]:
    """The ranking table's rows: the top RANKING_ROWS, then the trained mixtures ranked below them, a
    None (the gap row) wherever mixtures are skipped, so every proxy-truth pair stays visible in a
    sweep of thousands."""
    shown = [i for i, m in enumerate(analysis.mixtures)
             if i < RANKING_ROWS or m.truth_scores or m.truth_aggregate is not None]
    rows: list[Any] = []
    for previous, i in zip([-1, *shown], shown):
        if i != previous + 1:
            rows.append(None)
        rows.append(analysis.mixtures[i])
    skipped = len(shown) < len(analysis.mixtures)
    if skipped and shown[-1] != len(analysis.mixtures) - 1:
        rows.append(None)
    columns = 2 + len(analysis.domains) + len(analysis.benchmarks) + (2 if analysis.truth else 0)
    return {"ranking_rows": rows, "ranking_gap": skipped, "ranking_top": RANKING_ROWS,
            "ranking_csv": RANKING_CSV, "gap_row": "| ⋮ |" + " |" * (columns - 1)}


def ranking_csv(analysis: Analysis) -> str:
    """Every mixture, best first: rank, id, ``weight/DOMAIN``, ``proxy/BENCHMARK``, ``proxy/aggregate``
    and, with truth, ``truth/...`` and ``truth_rank``; empty where there is no value. For pandas and
    spreadsheets: report.md shows only the top of a large sweep. Floats are written in full (repr)."""
    import csv
    import io

    truth = analysis.truth is not None
    header = ["rank", "mixture_id", *(f"weight/{d}" for d in analysis.domains),
              *(f"proxy/{b}" for b in analysis.benchmarks), f"proxy/{AGGREGATE}"]
    if truth:
        header += [*(f"truth/{b}" for b in analysis.benchmarks), f"truth/{AGGREGATE}", "truth_rank"]

    def cell(value: Any) -> Any:
        return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else value

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for m in analysis.mixtures:
        row = [cell(m.rank), m.mixture_id, *(m.weights[d] for d in analysis.domains),
               *(cell(m.scores.get(b)) for b in analysis.benchmarks), cell(m.aggregate)]
        if truth:
            row += [*(cell(m.truth_scores.get(b)) for b in analysis.benchmarks), cell(m.truth_aggregate),
                    cell(m.truth_rank)]
        writer.writerow(row)
    return buffer.getvalue()


def default_title(analysis: Analysis) -> str:
    return f"Data mixture search over {', '.join(analysis.domains)}"


def _read(path: str | Path, what: str) -> list[JournalRecord]:
    """The journal's records and, for a sweep's journal.jsonl, those only in its shard journals."""
    from merge_proxy.results import ResultsInput, read_results

    inputs = ResultsInput(Path(path), None)
    if not inputs.journal.is_file() and not inputs.shards:
        raise ConfigError(f"no {what} journal at {path}; pass the journal.jsonl the sweep wrote")
    records = read_results(inputs)
    if not records:
        holds_text = inputs.journal.is_file() and inputs.journal.stat().st_size > 0
        raise ConfigError(
            f"{inputs.journal} holds no merge-proxy journal record; pass the journal.jsonl `merge-proxy sweep` wrote"
            if holds_text else
            f"the {what} journal {path} is empty; run the sweep (or the truth evaluations) first"
        )
    return records


def recommendation_summary(analysis: Analysis) -> str:
    """One line for a terminal: the recommended mixture, its score, and how many tie with it."""
    rec = analysis.recommended
    tied = len(analysis.best[AGGREGATE]) - 1
    return (f"{rec.mixture_id} (proxy aggregate {rec.aggregate:.4f}"
            + (f"; tied with {tied} other mixture(s), see the report)" if tied else ")"))


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
            # the records' digests, so push-results can tell whether it is given the scores this report
            # read (wherever the directory now is); the absolute paths find the truth journal again
            "inputs": {"proxy_journal": str(Path(proxy_journal).absolute()),
                       "truth_journal": None if truth_journal is None else str(Path(truth_journal).absolute()),
                       "proxy_sha256": records_digest(proxy_records),
                       "truth_sha256": None if truth_records is None else records_digest(truth_records)},
            "plots": names,
        }
        (stage / ANALYSIS_JSON).write_text(
            json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
        (stage / RANKING_CSV).write_text(ranking_csv(analysis), encoding="utf-8")
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


def load_analysis(report_dir: str | Path) -> dict[str, Any]:
    """A report directory's analysis.json, refused when missing or written by another schema version
    (a card built from fields it lacks would contradict the report beside it)."""
    from merge_proxy.analysis import SCHEMA, SCHEMA_VERSION

    path = Path(report_dir) / ANALYSIS_JSON
    if not path.is_file():
        raise ConfigError(f"no {ANALYSIS_JSON} in {report_dir}; pass a directory written by `merge-proxy report`")
    data = read_json(path, "rerun `merge-proxy report` to rewrite the report")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not an analysis (a JSON object); rerun `merge-proxy report` to rewrite the report")
    if data.get("schema") != SCHEMA or data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"{path} has schema {data.get('schema')!r} version {data.get('schema_version')!r}, this merge-proxy "
            f"writes {SCHEMA!r} version {SCHEMA_VERSION}; rerun `merge-proxy report` to rewrite the report"
        )
    return data


def _card_comparison(comp: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the card's table from analysis.json's comparison, raw values and the report's text."""
    row: dict[str, Any] = {"benchmark": comp["benchmark"], "n": comp["n"]}
    for method in ("spearman", "kendall", "pearson"):
        corr = comp[method]
        row[method], row[f"{method}_low"], row[f"{method}_high"] = corr["value"], corr["low"], corr["high"]
        row[f"{method}_text"] = _ci_text(corr["value"], corr["low"], corr["high"])
    row.update(top1_hit=comp["top1_hit"], top3_hit=comp["top3_hit"], regret=comp["regret"],
               top1_text=_hit(comp["top1_hit"]), top3_text=_hit(comp["top3_hit"]),
               regret_text=_num(comp["regret"]), pick_text=_picks(comp.get("proxy_best_tied") or ()))
    return row


def _base_label(base: Mapping[str, Any]) -> str | None:
    """How the result card names the base: a Hub base by id and commit; a local one by its folder's
    name only (the card is public, the path is the sweeping machine's)."""
    source, pinned = base.get("source"), str(base.get("pinned") or "")
    if not source:
        return None
    if base.get("revision") or not Path(pinned or str(source)).is_absolute():
        commit = f" at commit `{base['revision']}`" if base.get("revision") else ""
        return f"`{source}`{commit}"
    return f"a local directory, `{Path(str(source)).name}`"


def result_card_context(
    analysis: Analysis | Mapping[str, Any], records: Iterable[JournalRecord], title: str | None = None,
    *, ranking_csv: bool = True,
) -> dict[str, Any]:
    """The context of ``hub_cards/result.md.j2``: title, recommended, experts, correlations, and more.

    ``analysis`` is an :class:`Analysis` or a report's analysis.json (:func:`load_analysis`): both go
    through the JSON form, so a card pushed beside a report is built from that report's numbers,
    weights and title, never recomputed. ``experts`` comes from the records' ``experts`` field (what
    the sweep really merged, pinned), as dicts with name, source, pinned, revision (and ``sha``, the
    revision or ``local``). ``correlations`` is empty without truth, aggregate first otherwise; an
    undefined statistic is None and its ``*_text`` says ``n/a``, as report.md does. ``ranking_csv``:
    whether the pushed report has ranking.csv (a report written before it existed has not).
    """
    data = analysis.to_dict() if isinstance(analysis, Analysis) else dict(analysis)
    records = list(records)
    rec = data["recommended"]
    truth = data.get("truth")
    correlations = [_card_comparison(c) for c in ([truth["aggregate"], *truth["benchmarks"]] if truth else [])]
    check = (truth or {}).get("recommendation")
    # long lists are named in part, as in report.md: the card's template only loops
    tied_named, tied_more = head(data["best"][AGGREGATE], LISTED)
    untrained_named, untrained_more = head(check["untrained"] if check else (), LISTED)
    base = next((r.base for r in records if r.base and r.mode == "proxy"), None) or \
        next((r.base for r in records if r.base), {})
    domains = tuple(data["domains"])
    return {
        "title": title or data.get("title") or f"Data mixture search over {', '.join(domains)}",
        "recommended": {
            "mixture_id": rec["mixture_id"], "weights": dict(rec["weights"]), "score": rec["aggregate"],
            "truth_score": rec["truth_aggregate"], "tied": list(data["best"][AGGREGATE]),
            "tied_named": tied_named, "tied_more": tied_more,
            "trained": None if check is None else check["trained"],
            "check": None if check is None else {
                **check, "top1_text": _hit(check["top1_hit"]), "top3_text": _hit(check["top3_hit"]),
                "regret_text": _num(check["regret"]), "truth_text": _num(check["truth_aggregate"]),
                "untrained_named": untrained_named, "untrained_more": untrained_more},
        },
        "experts": _experts(records, domains),
        "base": dict(base),
        "base_label": _base_label(base),
        "benchmarks": list(data["benchmarks"]),
        "benchmark_weights": dict(data["benchmark_weights"]),
        "n_mixtures": len(data["mixtures"]),
        "baselines": list(data["baselines"]),
        "correlations": correlations,
        "confidence": truth["confidence"] if truth else None,
        "n_boot": truth["n_boot"] if truth else None,
        "same_model": list(truth.get("same_model", ())) if truth else [],
        "has_truth": truth is not None,
        "ranking_csv": ranking_csv,
        "repo_id": None,
    }
