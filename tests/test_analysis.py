"""merge_proxy.analysis: the score table, rankings, statistics against scipy, and proxy-vs-truth metrics."""

from __future__ import annotations

import itertools
import json
import logging
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from merge_proxy.analysis import AGGREGATE, Scores, analyze, compare, normalize_benchmark_weights
from merge_proxy.correlation import METHODS, bootstrap_indices, correlate, resample_statistics
from merge_proxy.ranking import competition_ranks, expected_top_k_hit, rank
from merge_proxy.errors import ConfigError
from merge_proxy.journal import Journal, JournalRecord
from merge_proxy.mixture import Mixture


def _records(mode: str, table: dict[tuple[float, ...], dict[str, float]], names=("a", "b")) -> list[JournalRecord]:
    out = []
    for weights, scores in table.items():
        mix = Mixture.from_mapping(dict(zip(names, weights)))
        for bench, score in scores.items():
            out.append(JournalRecord(mode, mix.key(), mix.as_dict(), bench, score))
    return out


def _key(*weights: float, names=("a", "b")) -> str:
    return Mixture.from_mapping(dict(zip(names, weights))).key()


def _journal_roundtrip(tmp_path, records, name="j.jsonl") -> list[JournalRecord]:
    journal = Journal(tmp_path / name)
    journal.append_many(records)
    return journal.records()


# --------------------------------------------------------------------------------------------- Scores


def test_scores_from_journal_and_weighted_aggregate(tmp_path):
    recs = _journal_roundtrip(tmp_path, _records("proxy", {
        (0.25, 0.75): {"x": 0.2, "y": 0.8},
        (0.5, 0.5): {"x": 0.6, "y": 0.3},
    }) + _records("truth", {(0.9, 0.1): {"x": 1.0, "y": 1.0}}))
    scores = Scores.from_records(recs, "proxy")
    assert scores.mixture_ids == [_key(0.25, 0.75), _key(0.5, 0.5)]  # truth record not mixed in
    assert scores.benchmarks == ("x", "y")
    assert scores.domains == ("a", "b")
    assert scores.weights[_key(0.25, 0.75)] == {"a": 0.25, "b": 0.75}
    equal = scores.aggregate()
    assert equal[_key(0.25, 0.75)] == pytest.approx(0.5)
    assert equal[_key(0.5, 0.5)] == pytest.approx(0.45)
    weighted = scores.aggregate({"x": 3, "y": 1})
    assert weighted[_key(0.25, 0.75)] == pytest.approx(0.75 * 0.2 + 0.25 * 0.8)
    assert weighted[_key(0.5, 0.5)] == pytest.approx(0.75 * 0.6 + 0.25 * 0.3)


def test_missing_benchmark_excluded_from_aggregate_with_warning(caplog):
    recs = _records("proxy", {(0.25, 0.75): {"x": 0.9, "y": 0.9}, (0.5, 0.5): {"x": 0.99}})
    scores = Scores.from_records(recs)
    with caplog.at_level(logging.WARNING, logger="merge_proxy.analysis"):
        agg = scores.aggregate()
    assert list(agg) == [_key(0.25, 0.75)]
    assert _key(0.5, 0.5) in caplog.text and "y" in caplog.text
    assert scores.missing() == {_key(0.5, 0.5): ["y"]}
    # a benchmark with weight 0 is not required
    assert set(scores.aggregate({"x": 1.0})) == {_key(0.25, 0.75), _key(0.5, 0.5)}

    analysis = analyze(recs, n_boot=0)
    assert analysis.incomplete == {_key(0.5, 0.5): ("y",)}
    assert analysis.recommended.mixture_id == _key(0.25, 0.75)  # not the incomplete 0.99
    assert analysis.mixture(_key(0.5, 0.5)).aggregate is None
    assert analysis.mixture(_key(0.5, 0.5)).rank is None
    assert analysis.mixtures[-1].mixture_id == _key(0.5, 0.5)


def test_nonfinite_score_is_missing_not_ranked():
    recs = _records("proxy", {(0.25, 0.75): {"x": 0.5}, (0.5, 0.5): {"x": float("nan")}})
    analysis = analyze(recs, n_boot=0)
    assert analysis.rankings[AGGREGATE] == (_key(0.25, 0.75),)
    assert _key(0.5, 0.5) in analysis.incomplete


def test_benchmark_weights_validation():
    assert normalize_benchmark_weights(None, ["x", "y"]) == {"x": 0.5, "y": 0.5}
    assert normalize_benchmark_weights({"x": 2}, ["x", "y"]) == {"x": 1.0, "y": 0.0}
    with pytest.raises(ConfigError, match="unknown benchmark.*'z'.*x, y"):
        normalize_benchmark_weights({"z": 1}, ["x", "y"])
    with pytest.raises(ConfigError, match="all 0"):
        normalize_benchmark_weights({"x": 0}, ["x", "y"])
    with pytest.raises(ConfigError, match=">= 0"):
        normalize_benchmark_weights({"x": -1}, ["x", "y"])
    recs = _records("proxy", {(0.5, 0.5): {"x": 0.5}})
    with pytest.raises(ConfigError, match="unknown benchmark"):
        analyze(recs, benchmark_weights={"mmmu": 1.0})


def test_mixed_experts_in_one_journal_is_an_error():
    recs = _records("proxy", {(0.5, 0.5): {"x": 0.5}}) + _records("proxy", {(0.5, 0.5): {"x": 0.5}}, names=("a", "c"))
    with pytest.raises(ConfigError, match="different experts"):
        Scores.from_records(recs)


def test_empty_journal_errors(tmp_path):
    with pytest.raises(ConfigError, match="no proxy scores"):
        analyze(Journal(tmp_path / "missing.jsonl").records())
    with pytest.raises(ConfigError, match="the proxy journal holds truth scores only .*: pass it with --truth"):
        analyze(_records("truth", {(0.5, 0.5): {"x": 0.5}}))


# --------------------------------------------------------------------------------------------- ranking


def test_ties_get_equal_ranks_and_are_all_named(caplog):
    """Tied mixtures are listed by mixture_id for stable tables, but share a rank (scipy's "min" ranks)
    and are all named as the best: the id spelling must not decide which one the proxy "prefers"."""
    assert rank({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]
    recs = _records("proxy", {(0.75, 0.25): {"x": 0.7}, (0.25, 0.75): {"x": 0.7}, (0.5, 0.5): {"x": 0.1}})
    with caplog.at_level(logging.WARNING, logger="merge_proxy.analysis"):
        analysis = analyze(recs, n_boot=0)
    tied = tuple(sorted([_key(0.75, 0.25), _key(0.25, 0.75)]))
    assert analysis.recommended.mixture_id == tied[0]
    assert analysis.best[AGGREGATE] == tied and analysis.best["x"] == tied
    assert "2 mixtures tie for the best" in caplog.text
    assert analysis.rankings["x"] == analysis.rankings[AGGREGATE]
    expected = stats.rankdata([-0.7, -0.7, -0.1], method="min").tolist()
    assert [m.rank for m in analysis.mixtures] == expected == [1, 1, 3]
    assert analysis.to_dict()["best"][AGGREGATE] == list(tied)
    # equal up to float noise of a weighted mean is a tie too
    assert competition_ranks({"a": 0.1 + 0.2, "b": 0.3, "c": 0.1}) == {"a": 1, "b": 1, "c": 3}


def test_per_benchmark_rankings_differ_from_aggregate():
    recs = _records("proxy", {
        (0.25, 0.75): {"x": 0.9, "y": 0.1},
        (0.5, 0.5): {"x": 0.6, "y": 0.6},
        (0.75, 0.25): {"x": 0.1, "y": 0.8},
    })
    analysis = analyze(recs, n_boot=0)
    assert analysis.rankings["x"][0] == _key(0.25, 0.75)
    assert analysis.rankings["y"][0] == _key(0.75, 0.25)
    assert analysis.recommended.mixture_id == _key(0.5, 0.5)
    assert analysis.recommended.aggregate == pytest.approx(0.6)


def test_baselines_uniform_with_tolerance_and_best_single_expert():
    names = ("p", "q", "r")
    recs = _records("proxy", {
        (0.333333, 0.333333, 0.333334): {"x": 0.5},
        (1.0, 0.0, 0.0): {"x": 0.3},
        (0.0, 1.0, 0.0): {"x": 0.4},
        (0.0, 0.0, 1.0): {"x": 0.2},
        (0.5, 0.25, 0.25): {"x": 0.9},
    }, names=names)
    truth = _records("truth", {(0.0, 1.0, 0.0): {"x": 0.45}, (0.5, 0.25, 0.25): {"x": 0.6},
                               (1.0, 0.0, 0.0): {"x": 0.1}}, names=names)
    analysis = analyze(recs, truth, n_boot=0)
    base = {b.name: b for b in analysis.baselines}
    assert base["uniform"].mixture_id == _key(0.333333, 0.333333, 0.333334, names=names)
    assert base["uniform"].aggregate == pytest.approx(0.5)
    assert base["uniform"].rank == 2
    assert base["uniform"].truth_aggregate is None
    assert base["best_single_expert"].mixture_id == _key(0.0, 1.0, 0.0, names=names)
    assert base["best_single_expert"].aggregate == pytest.approx(0.4)
    assert base["best_single_expert"].truth_aggregate == pytest.approx(0.45)
    assert analysis.recommended.truth_aggregate == pytest.approx(0.6)


def test_baselines_absent_when_not_swept():
    recs = _records("proxy", {(0.25, 0.75): {"x": 0.5}, (0.4, 0.6): {"x": 0.6}})
    base = {b.name: b for b in analyze(recs, n_boot=0).baselines}
    assert base["uniform"].mixture_id is None and base["uniform"].aggregate is None
    assert base["best_single_expert"].mixture_id is None


# --------------------------------------------------------------------------------------------- statistics


@pytest.fixture
def paired():
    rng = np.random.default_rng(3)
    x = rng.normal(size=14)
    y = 0.7 * x + rng.normal(scale=0.6, size=14)
    x[3] = x[5]  # ties on both sides exercise tau-b and average ranks
    y[7] = y[9]
    return x, y


def test_point_estimates_equal_scipy(paired):
    x, y = paired
    got = correlate(x, y, n_boot=0)
    for method, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)):
        ref = fn(x, y)
        assert got[method].value == pytest.approx(float(ref.statistic), abs=1e-12), method
        assert got[method].pvalue == pytest.approx(float(ref.pvalue), rel=1e-9), method


@pytest.mark.parametrize("tied", [False, True])
def test_vectorized_bootstrap_statistics_equal_scipy_per_resample(paired, tied):
    """Kendall's through resample counts, the others row by row: each equals scipy's on each resample,
    ties and constant resamples (NaN, as scipy) included."""
    x, y = paired
    if tied:  # coarse scores, as a tiny benchmark's exact match: many ties, some constant resamples
        x, y = np.round(x * 2) / 2, np.round(y)[: x.size]
        x, y = x[:6], y[:6]
    idx = bootstrap_indices(x.size, 200, seed=1)
    ref = {"spearman": stats.spearmanr, "kendall": stats.kendalltau, "pearson": stats.pearsonr}
    for method in METHODS:
        got = resample_statistics(method, x, y, idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns on the constant resamples it returns NaN for
            expected = np.array([ref[method](x[i], y[i]).statistic for i in idx], dtype=float)
        np.testing.assert_allclose(got, expected, atol=1e-10, err_msg=method)
        if tied:
            assert np.isnan(got).any() and np.isfinite(got).any(), method


def test_bootstrap_interval_contains_estimate_and_is_deterministic(paired):
    x, y = paired
    a = correlate(x, y, n_boot=500, seed=7)
    b = correlate(x, y, n_boot=500, seed=7)
    c = correlate(x, y, n_boot=500, seed=8)
    for method in ("spearman", "kendall", "pearson"):
        r = a[method]
        assert r.low <= r.value <= r.high, method
        assert r.low < r.high, method
        assert -1 <= r.low and r.high <= 1
        assert (r.low, r.high) == (b[method].low, b[method].high)
        assert r.n_boot == 500 and 0 < r.n_boot_valid <= 500
    assert (a["spearman"].low, a["spearman"].high) != (c["spearman"].low, c["spearman"].high)
    wider = correlate(x, y, n_boot=500, seed=7, confidence=0.99)["pearson"]
    assert wider.low <= a["pearson"].low and wider.high >= a["pearson"].high


def test_bootstrap_interval_matches_percentiles_of_scipy_statistics(paired):
    """The interval is the percentile interval of scipy's statistic on the documented resamples."""
    x, y = paired
    idx = bootstrap_indices(x.size, 300, seed=5)
    dist = np.array([stats.kendalltau(x[i], y[i]).statistic for i in idx])
    dist = dist[np.isfinite(dist)]
    low, high = np.percentile(dist, [2.5, 97.5])
    got = correlate(x, y, n_boot=300, seed=5)["kendall"]
    assert got.low == pytest.approx(low, abs=1e-10)
    assert got.high == pytest.approx(high, abs=1e-10)


def test_constant_scores_give_nan_not_a_crash():
    x = [0.5] * 6
    y = [0.1, 0.4, 0.2, 0.9, 0.3, 0.5]
    res = correlate(x, y, n_boot=200)
    for r in res.values():
        assert math.isnan(r.value) and math.isnan(r.low) and math.isnan(r.high)
    # constant resamples inside the bootstrap are dropped, not propagated as NaN
    few = correlate([1.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 3.0], n_boot=400, seed=0)
    assert few["pearson"].n_boot_valid < 400
    assert math.isfinite(few["pearson"].low) and math.isfinite(few["pearson"].high)


def test_too_few_mixtures_give_nan():
    res = correlate([0.1, 0.2], [0.3, 0.5], n_boot=100)
    assert all(math.isnan(r.value) for r in res.values())


# --------------------------------------------------------------------------------------------- top-k, regret


def test_top1_top3_regret_known_answers():
    proxy = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.1}
    truth = {"a": 0.50, "b": 0.70, "c": 0.60, "d": 0.20}
    res = compare(proxy, truth, "x", n_boot=0)
    assert res.n == 4
    assert res.proxy_best == "a" and res.truth_best == "b"
    assert res.top1_hit == 0.0
    assert res.top3_hit == 1.0
    assert res.regret == pytest.approx(0.20)
    assert res.proxy_top3 == ("a", "b", "c")
    assert res.proxy_best_tied == ("a",) and res.truth_best_tied == ("b",)

    truth_last = {"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.95}
    res = compare(proxy, truth_last, "x", n_boot=0)
    assert res.top1_hit == 0.0 and res.top3_hit == 0.0
    assert res.regret == pytest.approx(0.45)

    res = compare(proxy, proxy, "x", n_boot=0)
    assert res.top1_hit == 1.0 and res.top3_hit == 1.0 and res.regret == 0.0
    assert res.spearman.value == pytest.approx(1.0)


def test_top1_counts_ties_in_truth():
    res = compare({"a": 0.9, "b": 0.5, "c": 0.1}, {"a": 0.8, "b": 0.8, "c": 0.1}, "x", n_boot=0)
    assert res.truth_best == "a" and res.truth_best_tied == ("a", "b")
    assert res.top1_hit == 1.0 and res.regret == 0.0
    res = compare({"b": 0.9, "a": 0.5, "c": 0.1}, {"a": 0.8, "b": 0.8, "c": 0.1}, "x", n_boot=0)
    assert res.proxy_best == "b" and res.top1_hit == 1.0 and res.regret == 0.0


def _tie_break_reference(proxy, truth, k):
    """Brute force: every order of the mixtures consistent with the proxy's scores (ties permuted),
    equally likely; the mean top-k hit and the mean regret of the first pick."""
    orders = [o for o in itertools.permutations(proxy)
              if all(proxy[o[i]] >= proxy[o[i + 1]] for i in range(len(o) - 1))]
    top = max(truth.values())
    best = {m for m, s in truth.items() if s == top}
    hit = sum(bool(best & set(o[:k])) for o in orders) / len(orders)
    regret = sum(top - truth[o[0]] for o in orders) / len(orders)
    return hit, regret


def test_tied_proxy_top_scores_expected_hits_not_id_order():
    """The reviewer's case: a proxy that scores every mixture alike. Before, the verdict flipped with
    the mixture-id spelling (m1 best: top-1 yes, regret 0; m4 best: top-1 no, regret 0.8)."""
    proxy = {"m1": 0.0, "m2": 0.0, "m3": 0.0, "m4": 0.0}
    for truth in ({"m1": 0.9, "m2": 0.1, "m3": 0.2, "m4": 0.3}, {"m1": 0.1, "m2": 0.2, "m3": 0.3, "m4": 0.9}):
        res = compare(proxy, truth, "x", n_boot=0)
        assert res.proxy_best_tied == ("m1", "m2", "m3", "m4")
        assert res.top1_hit == pytest.approx(1 / 4)  # one of 4 equally likely picks
        assert res.top3_hit == pytest.approx(3 / 4)  # the best is left out of 3 of 4 places 1/4 of the time
        assert res.regret == pytest.approx((0 + 0.8 + 0.7 + 0.6) / 4)
        for k, got in ((1, res.top1_hit), (3, res.top3_hit)):
            assert got == pytest.approx(_tie_break_reference(proxy, truth, k)[0])


@pytest.mark.parametrize("seed", range(6))
def test_expected_hits_and_regret_equal_brute_force_over_tie_orders(seed):
    rng = np.random.default_rng(seed)
    ids = [f"m{i}" for i in range(6)]
    proxy = {m: float(v) for m, v in zip(ids, rng.integers(0, 3, 6))}  # many ties
    truth = {m: float(v) for m, v in zip(ids, rng.integers(0, 4, 6))}
    res = compare(proxy, truth, "x", n_boot=0)
    for k, got in ((1, res.top1_hit), (3, res.top3_hit)):
        assert got == pytest.approx(_tie_break_reference(proxy, truth, k)[0]), k
    assert res.regret == pytest.approx(_tie_break_reference(proxy, truth, 1)[1])
    for k in (1, 2, 3, 4):
        assert expected_top_k_hit(proxy, res.truth_best_tied, k) == pytest.approx(
            _tie_break_reference(proxy, truth, k)[0])


def test_analyze_with_truth_matches_scipy_and_reports_unmatched(tmp_path, caplog):
    rng = np.random.default_rng(0)
    ws = [(w, 1 - w) for w in np.linspace(0.0, 1.0, 9)]
    proxy_tab = {w: {"x": float(rng.uniform()), "y": float(rng.uniform())} for w in ws}
    truth_tab = {w: {"x": s["x"] + float(rng.normal(0, 0.1)), "y": s["y"] + float(rng.normal(0, 0.1))}
                 for w, s in list(proxy_tab.items())[:7]}
    truth_tab[(0.3, 0.7)] = {"x": 0.5, "y": 0.5}  # only in truth
    proxy_recs = _journal_roundtrip(tmp_path, _records("proxy", proxy_tab), "p.jsonl")
    truth_recs = _journal_roundtrip(tmp_path, _records("truth", truth_tab), "t.jsonl")
    with caplog.at_level(logging.INFO, logger="merge_proxy.analysis"):
        analysis = analyze(proxy_recs, truth_recs, n_boot=300, seed=0)
    t = analysis.truth
    assert t is not None
    assert t.n_matched == 7
    assert set(t.only_proxy) == {_key(*w) for w in ws[7:]}
    assert t.only_truth == (_key(0.3, 0.7),)
    # Untrained proxies are the usual case (a few of many mixtures are trained): info, not a warning;
    # a truth run the proxy lacks is a mistake worth a warning.
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records}
    assert levels["2 of 9 proxy mixture(s) have no truth run and are left out of the comparison"] == "INFO"
    assert levels["1 truth mixture(s) are not in the proxy journal and are left out"] == "WARNING"

    matched = [w for w in ws[:7]]
    spearmans = []
    for bench in ("x", "y"):
        comp = next(c for c in t.benchmarks if c.benchmark == bench)
        px = [proxy_tab[w][bench] for w in matched]
        tx = [truth_tab[w][bench] for w in matched]
        assert comp.n == 7
        assert comp.spearman.value == pytest.approx(stats.spearmanr(px, tx).statistic)
        assert comp.kendall.value == pytest.approx(stats.kendalltau(px, tx).statistic)
        assert comp.pearson.value == pytest.approx(stats.pearsonr(px, tx).statistic)
        spearmans.append(stats.spearmanr(px, tx).statistic)
    # Merge to Mix's summary: the mean of the per-benchmark correlations
    assert t.mean_over_benchmarks["spearman"] == pytest.approx(np.mean(spearmans))
    from merge_proxy.report import render_report

    assert f"Mean of the 2 per-benchmark correlations (as *Merge to Mix* reports them): Spearman " \
           f"{np.mean(spearmans):.3f}" in render_report(analysis)
    pa = [(proxy_tab[w]["x"] + proxy_tab[w]["y"]) / 2 for w in matched]
    ta = [(truth_tab[w]["x"] + truth_tab[w]["y"]) / 2 for w in matched]
    assert t.aggregate.benchmark == AGGREGATE
    assert t.aggregate.spearman.value == pytest.approx(stats.spearmanr(pa, ta).statistic)
    assert t.aggregate.pearson.value == pytest.approx(stats.pearsonr(pa, ta).statistic)
    best_truth = max(range(7), key=lambda i: ta[i])
    pick = max(range(7), key=lambda i: pa[i])
    assert t.aggregate.regret == pytest.approx(ta[best_truth] - ta[pick])
    assert t.aggregate.top1_hit == float(best_truth == pick)
    # truth values land in the mixture rows
    row = analysis.mixture(_key(*ws[0]))
    assert row.truth_aggregate == pytest.approx(ta[0])
    assert analysis.mixture(_key(*ws[8])).truth_aggregate is None


def _with_sources(records, experts=None, model=None, settings=None):
    from dataclasses import replace

    return [replace(r, experts=experts or [], model=model(r) if model else None, settings=settings or {})
            for r in records]


@pytest.mark.parametrize("truth_is_expert", [True, False])
def test_single_expert_mixture_whose_truth_is_the_expert_is_left_out(truth_is_expert, caplog):
    """The paper recipes score each expert as the truth of its one-domain mixture: the proxy at that
    vertex IS the expert, so the pair agrees by construction and would inflate every correlation. A
    one-domain model trained separately (the demo's) is a real comparison and stays."""
    experts = [{"name": "a", "pinned": "org/a@1111"}, {"name": "b", "pinned": "org/b@2222"}]
    ws = [(1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.0, 1.0)]
    proxy_tab = {w: {"x": s} for w, s in zip(ws, (0.9, 0.2, 0.5, 0.4, 0.1))}
    truth_tab = {w: {"x": s} for w, s in zip(ws, (0.9, 0.5, 0.3, 0.2, 0.1))}
    vertex_models = {_key(1.0, 0.0): "org/a@1111", _key(0.0, 1.0): "org/b@2222"}
    if not truth_is_expert:
        vertex_models = {k: v.replace("org/", "org/trained-") for k, v in vertex_models.items()}
    proxy = _with_sources(_records("proxy", proxy_tab), experts=experts, settings={"method": "linear"})
    truth = _with_sources(_records("truth", truth_tab),
                          model=lambda r: vertex_models.get(r.mixture_id, f"org/mix@{r.mixture_id}"))
    with caplog.at_level(logging.INFO, logger="merge_proxy.analysis"):
        t = analyze(proxy, truth, n_boot=0).truth
    kept = ws[1:4] if truth_is_expert else ws
    assert t.same_model == (tuple(sorted(vertex_models)) if truth_is_expert else ())
    assert t.n_matched == 5 and t.aggregate.n == len(kept)
    px, tx = [proxy_tab[w]["x"] for w in kept], [truth_tab[w]["x"] for w in kept]
    assert t.aggregate.spearman.value == pytest.approx(stats.spearmanr(px, tx).statistic)
    assert t.benchmarks[0].kendall.value == pytest.approx(stats.kendalltau(px, tx).statistic)
    assert ("left out of the proxy-truth comparison" in caplog.text) == truth_is_expert
    from merge_proxy.report import render_report, result_card_context

    analysis = analyze(proxy, truth, n_boot=0)
    said = "2 single-expert mixture(s) whose truth model is the expert itself"
    report = render_report(analysis)
    assert (said in report) == truth_is_expert
    assert ("5 mixture(s) scored by both, 3 compared." if truth_is_expert else "5 mixture(s) scored by both.") \
        in report
    assert result_card_context(analysis.to_dict(), proxy)["same_model"] == list(t.same_model)
    # the vertices keep their truth scores for the ranking and the best-single-expert baseline
    single = next(b for b in analyze(proxy, truth, n_boot=0).baselines if b.name == "best_single_expert")
    assert single.mixture_id == _key(1.0, 0.0) and single.truth_aggregate == pytest.approx(0.9)


def test_a_task_arithmetic_vertex_is_no_expert():
    """With scale 0.5 the proxy at a vertex is theta_0 + 0.5 delta, another model than the expert."""
    experts = [{"name": "a", "pinned": "org/a@1"}, {"name": "b", "pinned": "org/b@2"}]
    ws = [(1.0, 0.0), (0.5, 0.5), (0.25, 0.75)]
    proxy = _with_sources(_records("proxy", {w: {"x": i} for i, w in enumerate(ws)}), experts=experts,
                          settings={"method": "task_arithmetic", "scale": 0.5})
    truth = _with_sources(_records("truth", {w: {"x": i} for i, w in enumerate(ws)}),
                          model=lambda r: "org/a@1" if r.mixture_id == _key(1.0, 0.0) else "org/m@3")
    assert analyze(proxy, truth, n_boot=0).truth.same_model == ()
    # task_arithmetic weights need not sum to 1: (1, 0.5) is no expert, (0.5, 0) at scale 2 is expert a
    ws = [(1.0, 0.5), (0.5, 0.0), (0.25, 0.75)]
    for scale, expected in ((1.0, ()), (2.0, (_key(0.5, 0.0),))):
        proxy = _with_sources(_records("proxy", {w: {"x": i} for i, w in enumerate(ws)}), experts=experts,
                              settings={"method": "task_arithmetic", "scale": scale})
        truth = _with_sources(_records("truth", {w: {"x": i} for i, w in enumerate(ws)}), model=lambda r: "org/a@1")
        assert analyze(proxy, truth, n_boot=0).truth.same_model == expected


def test_rank_correlations_see_the_ties_the_ranking_sees():
    """Scores equal to 12 significant digits tie in the ranking; Spearman and Kendall treat them alike."""
    x = [0.1, 0.2, 0.3, 0.3 + 1e-15, 0.5]
    y = [0.1, 0.2, 0.35, 0.3, 0.5]
    got = correlate(x, y, n_boot=0)
    tied = [0.1, 0.2, 0.3, 0.3, 0.5]
    assert got["spearman"].value == pytest.approx(stats.spearmanr(tied, y).statistic)
    assert got["kendall"].value == pytest.approx(stats.kendalltau(tied, y).statistic)
    assert got["spearman"].value != pytest.approx(stats.spearmanr(x, y).statistic)


def test_truth_without_the_proxy_mixtures_errors():
    proxy = _records("proxy", {(0.25, 0.75): {"x": 0.5}, (0.5, 0.5): {"x": 0.6}})
    truth = _records("truth", {(0.1, 0.9): {"x": 0.5}})
    with pytest.raises(ConfigError, match="shares no mixture"):
        analyze(proxy, truth)
    with pytest.raises(ConfigError, match="no truth scores"):
        analyze(proxy, _records("proxy", {(0.25, 0.75): {"x": 0.5}}))


def test_recommendation_without_truth_is_not_trained_not_a_hit():
    """The proxy's best (0.9, 0.1) has no truth run: the comparison over trained mixtures picks the best
    among them, which says nothing about the recommendation itself."""
    proxy = _records("proxy", {(0.9, 0.1): {"x": 0.9}, (0.5, 0.5): {"x": 0.6}, (0.3, 0.7): {"x": 0.4},
                               (0.1, 0.9): {"x": 0.2}})
    truth = _records("truth", {(0.5, 0.5): {"x": 0.7}, (0.3, 0.7): {"x": 0.5}, (0.1, 0.9): {"x": 0.1}})
    analysis = analyze(proxy, truth, n_boot=0)
    t = analysis.truth
    assert analysis.recommended.mixture_id == _key(0.9, 0.1)
    assert t.aggregate.proxy_best == _key(0.5, 0.5) and t.aggregate.top1_hit == 1.0  # best among trained
    check = t.recommendation
    assert check.mixture_ids == (_key(0.9, 0.1),) and check.untrained == (_key(0.9, 0.1),)
    assert check.trained is False
    assert check.top1_hit is None and check.regret is None and check.truth_aggregate is None
    assert check.top3_hit == 1.0  # the best trained mixture is second in the proxy's full ranking
    assert check.n_trained == 3 and check.truth_best == (_key(0.5, 0.5),)

    # trained, but not the truth's best: regret by hand
    truth2 = truth + _records("truth", {(0.9, 0.1): {"x": 0.55}})
    check = analyze(proxy, truth2, n_boot=0).truth.recommendation
    assert check.trained is True and check.untrained == ()
    assert check.truth_aggregate == pytest.approx(0.55)
    assert check.top1_hit == 0.0 and check.top3_hit == 1.0
    assert check.regret == pytest.approx(0.7 - 0.55)
    assert check.same_benchmarks is True


def test_unnamed_benchmarks_in_weights_are_dropped_with_a_warning(caplog):
    recs = _records("proxy", {(0.25, 0.75): {"x": 0.2, "y": 0.9}, (0.5, 0.5): {"x": 0.3, "y": 0.1}})
    with caplog.at_level(logging.WARNING, logger="merge_proxy.analysis"):
        analysis = analyze(recs, benchmark_weights={"x": 2}, n_boot=0)
    assert analysis.benchmark_weights == {"x": 1.0, "y": 0.0}
    assert "do not name y" in caplog.text and "weight 0" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="merge_proxy.analysis"):
        analyze(recs, benchmark_weights={"x": 2, "y": 0}, n_boot=0)
    assert "do not name" not in caplog.text


def test_truth_missing_a_benchmark_compares_on_the_shared_ones():
    tab = {(w, 1 - w): {"x": w, "y": 1 - w} for w in (0.1, 0.3, 0.5, 0.7, 0.9)}
    truth = _records("truth", {k: {"x": v["x"]} for k, v in tab.items()})
    analysis = analyze(_records("proxy", tab), truth, n_boot=0)
    assert analysis.truth.aggregate_benchmarks == ("x",)
    assert analysis.truth.missing_truth_benchmarks == ("y",)
    assert analysis.truth.recommendation.same_benchmarks is False
    assert analysis.truth.aggregate.spearman.value == pytest.approx(1.0)
    assert [c.benchmark for c in analysis.truth.benchmarks] == ["x"]


def test_to_dict_is_strict_json():
    proxy = _records("proxy", {(w, 1 - w): {"x": 0.5} for w in (0.2, 0.4, 0.6)})
    truth = _records("truth", {(w, 1 - w): {"x": w} for w in (0.2, 0.4, 0.6)})
    data = analyze(proxy, truth, n_boot=50).to_dict()
    text = json.dumps(data, allow_nan=False)  # raises on NaN
    back = json.loads(text)
    assert back["schema"] == "merge-proxy/analysis"
    assert back["truth"]["aggregate"]["spearman"]["value"] is None  # constant proxy -> NaN -> null
    assert back["recommended"]["mixture_id"] == _key(0.2, 0.8)


def test_a_truth_of_single_experts_only_says_there_is_nothing_to_compare():
    from merge_proxy.report import render_report

    experts = [{"name": "a", "pinned": "org/a@1"}, {"name": "b", "pinned": "org/b@2"}]
    ws = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0)]
    proxy = _with_sources(_records("proxy", {w: {"x": i} for i, w in enumerate(ws)}), experts=experts)
    vertices = {w: {"x": i} for i, w in enumerate(ws) if 1.0 in w}
    truth = _with_sources(_records("truth", vertices),
                          model=lambda r: "org/a@1" if r.mixture_id == _key(1.0, 0.0) else "org/b@2")
    analysis = analyze(proxy, truth, n_boot=0)
    assert analysis.truth.aggregate.n == 0 and len(analysis.truth.same_model) == 2
    text = render_report(analysis)
    assert "Every trained mixture is a single expert scored as its own truth" in text
    assert "No mixture has truth on every weighted benchmark" not in text
