"""Turn a sweep journal into a ranking of mixtures and, with truth runs, a verdict on the proxy.

The question a sweep answers is "which data mixture should I train on?"; the question a truth run
answers is "can I trust the proxy's answer?". This module answers both from journal records alone:

* :class:`Scores` is the (mixture x benchmark) table of one mode (``proxy`` or ``truth``) and its
  weighted aggregate. A mixture missing a benchmark is left out of the aggregate, with a warning: filling
  the hole (with 0, a mean, ...) would silently move that mixture up or down the ranking.
* :func:`analyze` ranks the mixtures, picks the recommended one, finds the baselines a reader compares it
  with (the uniform mixture, the best single expert) and, given truth records, measures how well the
  proxy's ranking matches the truth's: rank and linear correlations with bootstrap intervals (a handful of
  mixtures gives wide intervals, and the reader must see that), whether the proxy's pick is the truth's
  best, and what choosing by proxy costs (regret).

It is pure numpy/scipy: no torch, no lmms-eval, so reports can be made on a laptop from a copied journal.
Every score is assumed "higher is better", as for lmms-eval's primary metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from merge_proxy.correlation import METHODS, Correlation, correlate
from merge_proxy.errors import ConfigError
from merge_proxy.journal import JournalRecord
from merge_proxy.listing import some
from merge_proxy.ranking import best_set, competition_ranks, expected_regret, expected_top_k_hit, rank

logger = logging.getLogger(__name__)

SCHEMA = "merge-proxy/analysis"
SCHEMA_VERSION = 3
"""2: top-k hits are expected rates (floats), ``best`` lists tied mixtures, ``truth.recommendation``
judges the recommended mixture itself, ranks are equal for tied scores. 3: ``truth.same_model``
(single-expert mixtures scored as their own truth, left out of the comparison) and
``truth.mean_over_benchmarks``; rank correlations on tie-rounded scores."""

#: Name of the aggregate in per-benchmark tables (a benchmark cannot take it: see :class:`Scores`).
AGGREGATE = "aggregate"
#: Weights closer than this are equal (the uniform mixture of 3 domains is written 0.333333,...).
WEIGHT_TOLERANCE = 1e-6


# ----------------------------------------------------------------------------------------------------
# The score table


@dataclass(frozen=True)
class Scores:
    """The scores of one mode: mixture_id -> weights, and mixture_id -> benchmark -> score.

    Built from journal records with :meth:`from_records`; mixtures keep the journal's order (the sweep's
    order), benchmarks are sorted so that tables and files do not depend on which job finished first.
    """

    mode: str
    weights: dict[str, dict[str, float]]
    scores: dict[str, dict[str, float]]
    benchmarks: tuple[str, ...]
    domains: tuple[str, ...]

    @classmethod
    def from_records(cls, records: Iterable[JournalRecord], mode: str = "proxy") -> Scores:
        """Keep the records of ``mode``; a repeated (mixture, benchmark) keeps the last one, with a warning.

        Non-finite scores are dropped with a warning, so the mixture counts as missing that benchmark
        rather than carrying a NaN into the ranking.
        """
        weights: dict[str, dict[str, float]] = {}
        scores: dict[str, dict[str, float]] = {}
        benchmarks: set[str] = set()
        domains: tuple[str, ...] | None = None
        not_numbers: list[str] = []
        twice: list[str] = []
        for r in records:
            if r.mode != mode:
                continue
            if r.benchmark == AGGREGATE:
                raise ConfigError(
                    f"a benchmark is named {AGGREGATE!r}, the name the report gives the weighted mean; "
                    "rename that task in the journal"
                )
            names = tuple(r.weights)
            if domains is None:
                domains = names
            elif set(names) != set(domains):
                raise ConfigError(
                    f"the {mode} journal mixes mixtures over different experts: {', '.join(domains)} and "
                    f"{', '.join(names)} (mixture {r.mixture_id}); keep one sweep per journal"
                )
            weights.setdefault(r.mixture_id, {d: float(r.weights[d]) for d in domains})
            score = float(r.score) if r.score is not None else math.nan
            if not math.isfinite(score):
                not_numbers.append(f"{r.mixture_id} on {r.benchmark} ({r.score!r})")
                scores.setdefault(r.mixture_id, {})
                continue
            row = scores.setdefault(r.mixture_id, {})
            if r.benchmark in row and row[r.benchmark] != score:
                twice.append(f"{r.mixture_id} on {r.benchmark} ({row[r.benchmark]}, then {score})")
            row[r.benchmark] = score
            benchmarks.add(r.benchmark)
        if not_numbers:
            logger.warning("%d %s score(s) are not numbers, treated as missing: %s", len(not_numbers), mode,
                           some(not_numbers))
        if twice:
            logger.warning("%d %s score(s) were scored twice, keeping the last: %s", len(twice), mode, some(twice))
        return cls(mode=mode, weights=weights, scores=scores, benchmarks=tuple(sorted(benchmarks)),
                   domains=domains or ())

    @property
    def mixture_ids(self) -> list[str]:
        return list(self.weights)

    def column(self, benchmark: str) -> dict[str, float]:
        """mixture_id -> score on ``benchmark``, for the mixtures that have it."""
        return {m: row[benchmark] for m, row in self.scores.items() if benchmark in row}

    def missing(self, benchmarks: Sequence[str] | None = None) -> dict[str, list[str]]:
        """mixture_id -> the benchmarks (of ``benchmarks``, default all) it has no score for."""
        wanted = self.benchmarks if benchmarks is None else tuple(benchmarks)
        out = {}
        for m, row in self.scores.items():
            lacking = [b for b in wanted if b not in row]
            if lacking:
                out[m] = lacking
        return out

    def aggregate(self, benchmark_weights: Mapping[str, float] | None = None, *, warn: bool = True) -> dict[str, float]:
        """mixture_id -> weighted mean over benchmarks (equal weights by default).

        Only benchmarks with a positive weight count. A mixture without a score on one of them is left
        out (and named in a warning): a partial mean is not comparable with the full ones.
        """
        weights = normalize_benchmark_weights(benchmark_weights, self.benchmarks)
        used = [b for b, w in weights.items() if w > 0]
        out: dict[str, float] = {}
        left_out = []
        for m, row in self.scores.items():
            lacking = [b for b in used if b not in row]
            if lacking:
                left_out.append(f"{m} (no {', '.join(lacking)})")
                continue
            out[m] = math.fsum(weights[b] * row[b] for b in used)
        if left_out and warn:
            logger.warning("%d %s mixture(s) lack a score on a weighted benchmark and are left out of the aggregate "
                           "ranking: %s", len(left_out), self.mode, some(left_out))
        return out


def normalize_benchmark_weights(
    benchmark_weights: Mapping[str, float] | None, benchmarks: Sequence[str]
) -> dict[str, float]:
    """Benchmark -> weight summing to 1. Unnamed benchmarks get 0; unknown names are an error.

    Default: equal weights. Weights are relative (``{"a": 2, "b": 1}`` means two thirds on a). Naming
    some benchmarks leaves the others out of the aggregate (weight 0) rather than giving them a default
    weight: any default would be a guess at their scale. Because that is easy to do by accident
    (``--weights gqa=2`` to stress one benchmark), :func:`analyze` names the left-out ones in a warning.
    """
    if not benchmarks:
        return {}
    if benchmark_weights is None:
        return {b: 1.0 / len(benchmarks) for b in benchmarks}
    unknown = [b for b in benchmark_weights if b not in benchmarks]
    if unknown:
        raise ConfigError(
            f"benchmark weights name unknown benchmark(s) {', '.join(map(repr, unknown))}; the journal has: "
            f"{', '.join(benchmarks)}; finish the sweep (rerun it), or pass --weights for those it has"
        )
    raw: dict[str, float] = {}
    for b in benchmarks:
        try:
            w = float(benchmark_weights.get(b, 0.0))
        except (TypeError, ValueError):
            raise ConfigError(f"weight of benchmark {b!r} is {benchmark_weights[b]!r}, not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"weight of benchmark {b!r} is {w}; use a finite weight >= 0")
        raw[b] = w
    total = math.fsum(raw.values())
    if total <= 0:
        raise ConfigError("benchmark weights are all 0; give at least one benchmark a positive weight")
    skipped = [b for b, w in raw.items() if w == 0 and b in benchmark_weights]
    if skipped:
        logger.info("benchmarks with weight 0 (not in the aggregate): %s", ", ".join(skipped))
    return {b: w / total for b, w in raw.items()}


# ----------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class MixtureResult:
    """One mixture's row in the report: its weights, scores, aggregate and rank, proxy and truth."""

    mixture_id: str
    weights: dict[str, float]
    scores: dict[str, float]
    aggregate: float | None
    """None when a weighted benchmark is missing (then ``rank`` is None too)."""
    rank: int | None
    """1 = best aggregate."""
    truth_scores: dict[str, float] = field(default_factory=dict)
    truth_aggregate: float | None = None
    truth_rank: int | None = None
    """Rank among the mixtures that have a truth aggregate."""


@dataclass(frozen=True)
class Baseline:
    """A mixture a reader compares the recommendation with; ``mixture_id`` None when the sweep lacks it."""

    name: str
    """``uniform`` (all weights equal) or ``best_single_expert`` (one weight 1, best proxy aggregate)."""
    mixture_id: str | None
    weights: dict[str, float] | None
    aggregate: float | None
    rank: int | None
    truth_aggregate: float | None = None
    truth_rank: int | None = None


@dataclass(frozen=True)
class BenchmarkAnalysis:
    """How well the proxy ranks the mixtures on one benchmark (or on the aggregate), against truth.

    The proxy's pick here is its best among the compared mixtures (those with truth), which is not the
    recommended mixture when that one was never trained: :class:`RecommendationCheck` judges that one.

    Ties: the proxy's pick is any of the mixtures tied for its best score (``proxy_best_tied``), each
    equally likely, since the proxy cannot tell them apart; the truth's best is every mixture tied for
    the best truth score (``truth_best_tied``). So:

    ``top1_hit``: probability that the proxy's pick is one of the truth's best (1.0 or 0.0 without a
    tie at the proxy's top). ``top3_hit``: probability that a truth-best mixture is in the proxy's top 3
    with the proxy's ties broken at random (:func:`expected_top_k_hit`). ``regret``: the truth's best
    score minus the mean truth score of the proxy's tied picks: the expected cost, in the benchmark's
    units, of choosing by proxy (0 when it picks right). ``proxy_best`` / ``truth_best`` name the first
    of each tied set by mixture_id, for plots; that choice carries no information.
    """

    benchmark: str
    n: int
    """Mixtures compared: scored by both proxy and truth on this benchmark."""
    spearman: Correlation
    kendall: Correlation
    pearson: Correlation
    proxy_best: str | None
    truth_best: str | None
    top1_hit: float | None
    top3_hit: float | None
    regret: float | None
    proxy_top3: tuple[str, ...] = ()
    proxy_best_tied: tuple[str, ...] = ()
    """Every mixture tied for the proxy's best score (one entry when there is no tie)."""
    truth_best_tied: tuple[str, ...] = ()
    proxy_scores: dict[str, float] = field(default_factory=dict)
    """The compared proxy scores (mixture_id -> score), for plots and for checking the numbers."""
    truth_scores: dict[str, float] = field(default_factory=dict)

    @property
    def correlations(self) -> dict[str, Correlation]:
        return {"spearman": self.spearman, "kendall": self.kendall, "pearson": self.pearson}


@dataclass(frozen=True)
class RecommendationCheck:
    """The recommended mixture itself judged against truth.

    :class:`BenchmarkAnalysis` compares the proxy with truth over the trained mixtures only, so its
    "proxy's pick" is the proxy's best among those, which is not the recommendation when the
    recommendation was never trained. This is the verdict on the mixture the report tells a reader to
    train: when it (or a mixture tied with it) has no truth aggregate, it is ``trained`` False and top-1
    and regret are unknown (None). Otherwise top-1, top-3 and regret are as in
    :class:`BenchmarkAnalysis` (expected over the tied picks), against the best *trained* mixtures, with
    the proxy's full ranking (untrained mixtures included) for top-3.
    """

    mixture_ids: tuple[str, ...]
    """The recommended mixture and every mixture tied with it (by mixture_id)."""
    trained: bool
    untrained: tuple[str, ...]
    """Those of ``mixture_ids`` without a truth aggregate."""
    truth_aggregate: float | None
    """Mean truth aggregate of ``mixture_ids`` when all were trained."""
    truth_best: tuple[str, ...]
    """The trained mixtures tied for the best truth aggregate."""
    n_trained: int
    top1_hit: float | None
    top3_hit: float | None
    regret: float | None
    same_benchmarks: bool
    """False when truth lacks a weighted benchmark: the recommendation's proxy aggregate then averages
    more benchmarks than the truth aggregate it is judged by."""


@dataclass(frozen=True)
class TruthComparison:
    """The proxy judged against truth: per benchmark and on the aggregate, over matched mixtures only."""

    n_matched: int
    only_proxy: tuple[str, ...]
    """Mixtures scored by the proxy but with no truth run: left out of every comparison."""
    only_truth: tuple[str, ...]
    """Truth runs of mixtures the proxy journal does not have: left out too."""
    benchmarks: tuple[BenchmarkAnalysis, ...]
    aggregate: BenchmarkAnalysis
    aggregate_benchmarks: tuple[str, ...]
    """Benchmarks in the compared aggregate: the weighted ones truth has (re-normalized if fewer)."""
    missing_truth_benchmarks: tuple[str, ...]
    """Benchmarks the proxy has and truth lacks (compared nowhere)."""
    n_boot: int
    seed: int
    confidence: float
    recommendation: RecommendationCheck | None = None
    mean_over_benchmarks: dict[str, float] = field(default_factory=dict)
    """Method -> the mean of the per-benchmark correlations (those defined), as *Merge to Mix* reports
    them: another summary than the correlation of the aggregates."""
    same_model: tuple[str, ...] = ()
    """Matched mixtures whose truth model is the expert their proxy is (:func:`proxy_is_truth`): left
    out of the correlations, top-k and regret; their truth scores still count in the ranking, the
    baselines and the recommendation's check."""


@dataclass(frozen=True)
class Analysis:
    """Everything the report shows, computed once from the journals; :meth:`to_dict` is analysis.json."""

    domains: tuple[str, ...]
    benchmarks: tuple[str, ...]
    benchmark_weights: dict[str, float]
    """Normalized to sum 1; 0 for benchmarks left out of the aggregate."""
    mixtures: tuple[MixtureResult, ...]
    """Ranked by aggregate; mixtures without an aggregate last, by mixture_id."""
    rankings: dict[str, tuple[str, ...]]
    """Benchmark (and ``aggregate``) -> mixture ids best first (tied mixtures by mixture_id)."""
    best: dict[str, tuple[str, ...]]
    """Benchmark (and ``aggregate``) -> every mixture tied for the best score. More than one for the
    aggregate means the proxy cannot choose: ``recommended`` is then only the first by mixture_id."""
    recommended: MixtureResult
    incomplete: dict[str, tuple[str, ...]]
    """Proxy mixtures left out of the aggregate -> the weighted benchmarks they lack."""
    baselines: tuple[Baseline, ...]
    truth: TruthComparison | None = None

    def mixture(self, mixture_id: str) -> MixtureResult:
        for m in self.mixtures:
            if m.mixture_id == mixture_id:
                return m
        raise KeyError(mixture_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes null (JSON has no NaN), tuples become lists."""
        data = asdict(self)
        data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **data}
        return _jsonable(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------------------------------
# Analysis


def compare(
    proxy: Mapping[str, float], truth: Mapping[str, float], benchmark: str,
    *, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
) -> BenchmarkAnalysis:
    """Compare proxy and truth scores (mixture_id -> score) over the mixtures both have."""
    common = sorted(set(proxy) & set(truth))
    x = [proxy[m] for m in common]
    y = [truth[m] for m in common]
    corr = correlate(x, y, n_boot=n_boot, seed=seed, confidence=confidence)
    if not common:
        return BenchmarkAnalysis(benchmark, 0, corr["spearman"], corr["kendall"], corr["pearson"],
                                 None, None, None, None, None)
    p = {m: proxy[m] for m in common}
    t = {m: truth[m] for m in common}
    picks, best = best_set(p), best_set(t)
    return BenchmarkAnalysis(
        benchmark=benchmark, n=len(common),
        spearman=corr["spearman"], kendall=corr["kendall"], pearson=corr["pearson"],
        proxy_best=picks[0], truth_best=best[0],
        top1_hit=expected_top_k_hit(p, best, 1), top3_hit=expected_top_k_hit(p, best, 3),
        regret=expected_regret(picks, t), proxy_top3=tuple(rank(p)[:3]), proxy_scores=p, truth_scores=t,
        proxy_best_tied=picks, truth_best_tied=best,
    )


def _is_uniform(weights: Mapping[str, float]) -> bool:
    values = list(weights.values())
    return bool(values) and all(abs(w - 1.0 / len(values)) <= WEIGHT_TOLERANCE for w in values)


def _is_single(weights: Mapping[str, float]) -> bool:
    return any(abs(w - 1.0) <= WEIGHT_TOLERANCE for w in weights.values())


def analyze(
    proxy_records: Iterable[JournalRecord],
    truth_records: Iterable[JournalRecord] | None = None,
    benchmark_weights: Mapping[str, float] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Analysis:
    """Rank the proxy's mixtures, recommend one, and, with truth records, judge the proxy.

    ``proxy_records`` keeps its ``proxy`` records, ``truth_records`` its ``truth`` ones (the same journal
    may be passed for both). Raises :class:`ConfigError` for an empty proxy journal, truth records that
    share no mixture with the proxy, and benchmark weights naming unknown benchmarks.
    """
    proxy_records = list(proxy_records)
    proxy = Scores.from_records(proxy_records, "proxy")
    if not proxy.scores:
        if any(r.mode == "truth" for r in proxy_records):
            raise ConfigError("the proxy journal holds truth scores only (a sweep of mode truth): pass it with "
                              "--truth, after the proxy sweep's directory")
        raise ConfigError(
            "the proxy journal has no proxy scores; run the sweep first (or point at its journal.jsonl)"
        )
    if not proxy.benchmarks:
        raise ConfigError("the proxy journal has no usable score (all were missing or not numbers); rerun the sweep")
    weights = normalize_benchmark_weights(benchmark_weights, proxy.benchmarks)
    unnamed = [b for b in proxy.benchmarks if benchmark_weights is not None and b not in benchmark_weights]
    if unnamed:
        logger.warning("the benchmark weights do not name %s: weight 0, left out of the aggregate; "
                       "name them (TASK=W) to count them", ", ".join(unnamed))
    used = tuple(b for b, w in weights.items() if w > 0)
    agg = proxy.aggregate(weights)
    incomplete = {m: tuple(b) for m, b in proxy.missing(used).items()}
    if not agg:
        raise ConfigError(
            f"no mixture has a score on every weighted benchmark ({', '.join(used)}); finish the sweep "
            "(rerun it: it skips what is done) or weight only the benchmarks it has"
        )

    rankings: dict[str, tuple[str, ...]] = {b: tuple(rank(proxy.column(b))) for b in proxy.benchmarks}
    rankings[AGGREGATE] = tuple(rank(agg))
    best = {b: best_set(proxy.column(b)) for b in proxy.benchmarks}
    best[AGGREGATE] = best_set(agg)
    if len(best[AGGREGATE]) > 1:
        logger.warning("%d mixtures tie for the best aggregate proxy score: %s; the proxy cannot choose "
                       "between them", len(best[AGGREGATE]), some(best[AGGREGATE]))
    proxy_rank = competition_ranks(agg)

    truth_cmp: TruthComparison | None = None
    truth_agg: dict[str, float] = {}
    truth_scores_by_mix: dict[str, dict[str, float]] = {}
    truth_rank: dict[str, int] = {}
    if truth_records is not None:
        truth_records = list(truth_records)
        truth_cmp, truth_agg, truth_scores_by_mix = _compare_truth(
            proxy, Scores.from_records(truth_records, "truth"), weights, n_boot=n_boot, seed=seed,
            confidence=confidence, same_model=proxy_is_truth(proxy_records, truth_records),
        )
        truth_rank = competition_ranks(truth_agg)
        truth_cmp = replace(truth_cmp, recommendation=check_recommendation(
            agg, truth_agg, same_benchmarks=set(truth_cmp.aggregate_benchmarks) == set(used)))

    rows = []
    for m in list(rankings[AGGREGATE]) + sorted(set(proxy.mixture_ids) - set(agg)):
        rows.append(MixtureResult(
            mixture_id=m, weights=dict(proxy.weights[m]), scores=dict(sorted(proxy.scores[m].items())),
            aggregate=agg.get(m), rank=proxy_rank.get(m),
            truth_scores=dict(sorted(truth_scores_by_mix.get(m, {}).items())), truth_aggregate=truth_agg.get(m),
            truth_rank=truth_rank.get(m),
        ))
    by_id = {r.mixture_id: r for r in rows}

    baselines = []
    uniform = sorted(m for m in proxy.mixture_ids if _is_uniform(proxy.weights[m]))
    uniform_ranked = [m for m in rankings[AGGREGATE] if m in uniform] or uniform
    baselines.append(_baseline("uniform", by_id.get(uniform_ranked[0]) if uniform_ranked else None))
    singles = [m for m in rankings[AGGREGATE] if _is_single(proxy.weights[m])]
    singles += sorted(m for m in proxy.mixture_ids if m not in agg and _is_single(proxy.weights[m]))
    baselines.append(_baseline("best_single_expert", by_id.get(singles[0]) if singles else None))

    return Analysis(
        domains=proxy.domains, benchmarks=proxy.benchmarks, benchmark_weights=weights,
        mixtures=tuple(rows), rankings=rankings, best=best, recommended=by_id[best[AGGREGATE][0]],
        incomplete=incomplete, baselines=tuple(baselines), truth=truth_cmp,
    )


def check_recommendation(
    proxy_agg: Mapping[str, float], truth_agg: Mapping[str, float], *, same_benchmarks: bool = True,
) -> RecommendationCheck:
    """Judge the proxy's best aggregate (all tied mixtures) against the trained mixtures' truth."""
    picks = best_set(proxy_agg)
    untrained = tuple(m for m in picks if m not in truth_agg)
    truth_best = best_set(truth_agg)
    trained = not untrained and bool(picks)
    return RecommendationCheck(
        mixture_ids=picks, trained=trained, untrained=untrained,
        truth_aggregate=float(math.fsum(truth_agg[m] for m in picks) / len(picks)) if trained else None,
        truth_best=truth_best, n_trained=len(truth_agg),
        top1_hit=expected_top_k_hit(proxy_agg, truth_best, 1) if trained else None,
        top3_hit=expected_top_k_hit(proxy_agg, truth_best, 3) if truth_best else None,
        regret=expected_regret(picks, truth_agg) if trained else None,
        same_benchmarks=same_benchmarks,
    )


def _baseline(name: str, row: MixtureResult | None) -> Baseline:
    if row is None:
        return Baseline(name, None, None, None, None)
    return Baseline(name, row.mixture_id, dict(row.weights), row.aggregate, row.rank,
                    row.truth_aggregate, row.truth_rank)


def proxy_is_truth(proxy_records: Iterable[JournalRecord], truth_records: Iterable[JournalRecord]) -> tuple[str, ...]:
    """Mixtures whose truth model is the very expert their proxy reduces to: exactly one non-zero
    coefficient (weight, times scale for task_arithmetic), equal to 1, and the truth run evaluated that
    expert's checkpoint, as the paper recipes do for the single-expert baselines. Proxy and truth are then one model scored twice; counting such pairs
    would raise every correlation by construction (they also sit at the extremes of the ranking).

    Judged by the pinned sources the journals record (``repo@sha`` or a local path), so a one-domain
    model trained separately (another run, as ``merge-proxy demo`` trains) still counts.
    """
    truth_model = {r.mixture_id: r.model for r in truth_records if r.mode == "truth" and r.model}
    same = set()
    for r in proxy_records:
        if r.mode != "proxy" or r.mixture_id not in truth_model or r.mixture_id in same:
            continue
        # The proxy is theta_0 + sum_i c_i delta_i, c_i = w_i (x scale for task_arithmetic): one expert
        # itself when exactly one c_i is non-zero and it is 1.
        scale = r.settings.get("scale")
        times = 1.0 if r.settings.get("method", "linear") == "linear" or scale is None else float(scale)
        nonzero = [(name, w * times) for name, w in r.weights.items() if abs(w) > WEIGHT_TOLERANCE]
        if len(nonzero) != 1 or abs(nonzero[0][1] - 1.0) > WEIGHT_TOLERANCE:
            continue
        pinned = {e.get("name"): e.get("pinned") for e in r.experts}.get(nonzero[0][0])
        if pinned and pinned == truth_model[r.mixture_id]:
            same.add(r.mixture_id)
    return tuple(sorted(same))


def _mean_correlations(per_benchmark: Sequence[BenchmarkAnalysis]) -> dict[str, float]:
    out = {}
    for method in METHODS:
        values = [c.correlations[method].value for c in per_benchmark if math.isfinite(c.correlations[method].value)]
        out[method] = float(np.mean(values)) if values else math.nan
    return out


def _compare_truth(
    proxy: Scores, truth: Scores, weights: Mapping[str, float], *, n_boot: int, seed: int, confidence: float,
    same_model: Sequence[str] = (),
) -> tuple[TruthComparison, dict[str, float], dict[str, dict[str, float]]]:
    if not truth.scores:
        raise ConfigError(
            "the truth journal has no truth scores (is it the proxy sweep's? pass that one first, the truth "
            "sweep's with --truth); evaluate the trained models first (records of mode 'truth'), or leave the "
            "truth journal out"
        )
    common = [m for m in proxy.mixture_ids if m in truth.scores]
    only_proxy = tuple(m for m in proxy.mixture_ids if m not in truth.scores)
    only_truth = tuple(m for m in truth.mixture_ids if m not in proxy.scores)
    if not common:
        sample = ", ".join(truth.mixture_ids[:3])
        raise ConfigError(
            f"the truth journal shares no mixture with the proxy journal (truth has {sample}"
            f"{', ...' if len(truth.mixture_ids) > 3 else ''}); truth runs must use the sweep's mixtures, "
            "with the same mixture_id (same experts, in the same order, same weights)"
        )
    if only_proxy:  # the usual case (a few of many mixtures are trained): counted, not warned about
        logger.info("%d of %d proxy mixture(s) have no truth run and are left out of the comparison: %s",
                    len(only_proxy), len(proxy.mixture_ids), some(only_proxy))
    if only_truth:
        logger.warning("%d truth mixture(s) are not in the proxy journal and are left out: %s",
                       len(only_truth), some(only_truth))
    if same_model:
        logger.info("%d single-expert mixture(s) whose truth model is the expert itself are left out of the "
                    "proxy-truth comparison (one model scored twice): %s", len(same_model), some(same_model))
    compared = {m for m in common if m not in same_model}
    extra = [b for b in truth.benchmarks if b not in proxy.benchmarks]
    if extra:
        logger.warning("truth benchmarks the proxy has no score for (ignored): %s", ", ".join(extra))
    shared = [b for b in proxy.benchmarks if b in truth.benchmarks]
    missing = tuple(b for b in proxy.benchmarks if b not in truth.benchmarks)
    per_bench = []
    for b in shared:
        p = {m: s for m, s in proxy.column(b).items() if m in compared}
        t = {m: s for m, s in truth.column(b).items() if m in compared}
        per_bench.append(compare(p, t, b, n_boot=n_boot, seed=seed, confidence=confidence))

    agg_benchmarks = tuple(b for b in shared if weights.get(b, 0) > 0)
    if not agg_benchmarks:
        raise ConfigError(
            f"the truth journal has none of the weighted benchmarks ({', '.join(b for b, w in weights.items() if w > 0)}); "
            "evaluate the trained models on the sweep's benchmarks"
        )
    if set(agg_benchmarks) != {b for b, w in weights.items() if w > 0}:
        logger.warning("truth lacks %s: the proxy-truth aggregate comparison uses only %s",
                       ", ".join(missing), ", ".join(agg_benchmarks))
    sub = {b: weights[b] for b in agg_benchmarks}
    # Same benchmarks and weights on both sides, so the aggregates are comparable.
    p_agg = proxy.aggregate(sub, warn=False)
    t_agg_all = truth.aggregate(sub)
    p_agg = {m: s for m, s in p_agg.items() if m in truth.scores}
    t_agg = {m: s for m, s in t_agg_all.items() if m in proxy.scores}
    aggregate = compare({m: s for m, s in p_agg.items() if m in compared},
                        {m: s for m, s in t_agg.items() if m in compared},
                        AGGREGATE, n_boot=n_boot, seed=seed, confidence=confidence)
    truth_scores = {m: dict(truth.scores[m]) for m in common}
    comparison = TruthComparison(
        n_matched=len(common), only_proxy=only_proxy, only_truth=only_truth, benchmarks=tuple(per_bench),
        aggregate=aggregate, aggregate_benchmarks=agg_benchmarks, missing_truth_benchmarks=missing,
        n_boot=n_boot, seed=seed, confidence=confidence, same_model=tuple(same_model),
        mean_over_benchmarks=_mean_correlations(per_bench),
    )
    return comparison, t_agg, truth_scores
