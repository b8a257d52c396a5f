"""merge_proxy.report and merge_proxy.plots: report.md, analysis.json, plots and the Hub result card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from merge_proxy.errors import ConfigError
from merge_proxy.journal import Journal, JournalRecord
from merge_proxy.mixture import Mixture
from merge_proxy.report import render_report, result_card_context, write_report

BENCHMARKS = ("chartqa", "mmbench", "ocrbench")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _paper(key: str) -> tuple[list[str], list[list[float]]]:
    from merge_proxy.resources import paper_mixtures

    ref = paper_mixtures()[key]  # the copy shipped with the package
    return list(ref["domains"]), [list(m["weights"]) for m in ref["mixtures"]]


def _experts(domains):
    experts = [{"name": d, "source": f"org/{d}-expert", "pinned": f"org/{d}-expert@{SHA}", "revision": SHA,
                "kind": "lora"} for d in domains]
    experts[-1] = {"name": domains[-1], "source": "/data/local-expert", "pinned": "/data/local-expert",
                   "revision": None, "kind": "full"}
    return experts


def _sweep(tmp_path: Path, key: str, *, truth_every: int = 1, skip_truth: int = 2, seed: int = 0):
    """Synthetic proxy and truth journals over the paper's mixtures.

    Scores are a random linear function of the weights per benchmark; truth = proxy + noise. Truth is
    missing for every ``skip_truth``-th mixture. Returns (proxy path, truth path, proxy table, truth table).
    """
    domains, mixtures = _paper(key)
    rng = np.random.default_rng(seed)
    coef = {b: rng.uniform(0.2, 0.9, len(domains)) for b in BENCHMARKS}
    experts = _experts(domains)
    proxy_tab, truth_tab, precs, trecs = {}, {}, [], []
    for i, w in enumerate(mixtures):
        mix = Mixture.from_mapping(dict(zip(domains, w)))
        proxy_tab[mix.key()] = {}
        for b in BENCHMARKS:
            s = float(np.dot(coef[b], w) + rng.normal(0, 0.02))
            proxy_tab[mix.key()][b] = s
            precs.append(JournalRecord("proxy", mix.key(), mix.as_dict(), b, s, experts=experts,
                                       base={"source": "Qwen/Qwen2-VL-2B-Instruct", "revision": SHA}))
            if skip_truth and i % skip_truth == skip_truth - 1:
                continue
            t = s + float(rng.normal(0, 0.03))
            truth_tab.setdefault(mix.key(), {})[b] = t
            trecs.append(JournalRecord("truth", mix.key(), mix.as_dict(), b, t, model=f"org/trained-{i}@{SHA}"))
    pj, tj = Journal(tmp_path / "proxy.jsonl"), Journal(tmp_path / "truth.jsonl")
    pj.append_many(precs)
    tj.append_many(trecs)
    return pj.path, tj.path, proxy_tab, truth_tab


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def _render_card(ctx: dict) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    from merge_proxy.resources import card_template

    data = ModelCardData(tags=["merge-proxy"])
    return str(ModelCard.from_template(data, template_str=card_template("result"), **ctx))


EXPECTED_PLOTS = {
    "two_domain": {"score_vs_weight.png", "proxy_vs_truth.png"},
    "three_domain": {"ternary_aggregate.png", "proxy_vs_truth.png"},
    "four_domain": {"score_vs_domain_weights.png", "proxy_vs_truth.png"},
}


@pytest.mark.parametrize("key", ["two_domain", "three_domain", "four_domain"])
def test_report_and_card_render(tmp_path, key):
    proxy, truth, proxy_tab, truth_tab = _sweep(tmp_path, key)
    out = tmp_path / "report"
    result = write_report(proxy, truth, out, n_boot=200, seed=0)

    # the recommendation is the best equal-weight mean, computed here independently
    means = {m: np.mean([s[b] for b in BENCHMARKS]) for m, s in proxy_tab.items()}
    best = max(means, key=means.get)
    assert result.analysis.recommended.mixture_id == best
    assert result.out_dir == out.absolute()
    assert sorted(p.name for p in out.iterdir()) == sorted({"report.md", "analysis.json", "ranking.csv"}
                                                           | EXPECTED_PLOTS[key])
    assert {p.name for p in result.plots} == EXPECTED_PLOTS[key]
    for p in result.plots:
        _assert_png(p)
    assert not list(tmp_path.glob(".report.partial-*"))

    md = result.report.read_text()
    assert f"**`{best}`**" in md
    for name in EXPECTED_PLOTS[key]:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(name)}\)", md), name
    assert "## Proxy vs truth" in md
    assert "Spearman" in md and "regret" in md
    ranking = md.split("## Ranking")[1].split("\n## ")[0]
    rows = [line for line in ranking.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, len(proxy_tab) + 1))
    missing_truth = sorted(set(proxy_tab) - set(truth_tab))
    assert missing_truth
    for m in missing_truth:
        assert f"`{m}`" in md.split("Without a truth run")[1].split("\n\n")[0]

    data = json.loads(result.analysis_json.read_text())
    assert data["schema"] == "merge-proxy/analysis" and data["schema_version"] == 3
    assert data["recommended"]["mixture_id"] == best
    assert data["recommended"]["aggregate"] == pytest.approx(means[best])
    assert len(data["mixtures"]) == len(proxy_tab)
    assert [m["rank"] for m in data["mixtures"]] == list(range(1, len(proxy_tab) + 1))
    assert sorted(data["truth"]["only_proxy"]) == missing_truth
    assert data["truth"]["n_matched"] == len(truth_tab)
    assert set(data["plots"]) == EXPECTED_PLOTS[key]
    assert data["inputs"]["proxy_journal"] == str(proxy)
    agg = data["truth"]["aggregate"]
    assert agg["n"] == len(truth_tab)
    assert agg["spearman"]["low"] <= agg["spearman"]["value"] <= agg["spearman"]["high"]

    ctx = result_card_context(result.analysis, Journal(proxy).records(), title="Mixture search test")
    card = _render_card(ctx)
    domains, _ = _paper(key)
    assert "# Mixture search test" in card
    assert card.startswith("---\n") and "merge-proxy" in card.split("---")[1]
    for d in domains:
        assert f"`{d}`: {result.analysis.recommended.weights[d]:.4f}" in card
    assert f"{result.analysis.recommended.aggregate:.4f}" in card
    assert f"| `{domains[0]}` | `org/{domains[0]}-expert` | `org/{domains[0]}-expert@{SHA}` | `{SHA}` |" in card
    assert "`/data/local-expert` | `/data/local-expert` | local directory |" in card
    assert "## How well the proxy ranks mixtures" in card
    assert f"| aggregate | {agg['n']} | {agg['spearman']['value']:.3f} [" in card
    assert [e["name"] for e in ctx["experts"]] == domains
    assert {"name", "source", "pinned", "revision"} <= set(ctx["experts"][0])
    assert ctx["experts"][0]["pinned"] == f"org/{domains[0]}-expert@{SHA}"
    assert ctx["base"]["source"] == "Qwen/Qwen2-VL-2B-Instruct"


def test_report_without_truth(tmp_path):
    proxy, _, proxy_tab, _ = _sweep(tmp_path, "three_domain")
    result = write_report(proxy, None, tmp_path / "out", title="Proxy only")
    assert {p.name for p in result.plots} == {"ternary_aggregate.png"}
    assert not (tmp_path / "out" / "proxy_vs_truth.png").exists()
    md = result.report.read_text()
    assert md.startswith("# Proxy only\n")
    assert "Proxy vs truth" not in md and "truth rank" not in md
    assert "![aggregate proxy score over the simplex](ternary_aggregate.png)" in md
    data = json.loads(result.analysis_json.read_text())
    assert data["truth"] is None and data["title"] == "Proxy only"
    base = {b["name"]: b for b in data["baselines"]}
    uniform = Mixture.from_mapping({"counting": 0.333333, "general": 0.333333, "ocr": 0.333334}).key()
    assert base["uniform"]["mixture_id"] == uniform  # matched with tolerance 1e-6
    assert base["uniform"]["aggregate"] == pytest.approx(np.mean(list(proxy_tab[uniform].values())))
    assert base["best_single_expert"]["mixture_id"] is None
    assert "not in the sweep" in md

    ctx = result_card_context(result.analysis, Journal(proxy).records())
    assert ctx["correlations"] == []
    card = _render_card(ctx)
    assert "How well the proxy ranks" not in card
    assert result.analysis.recommended.mixture_id.split(",")[0].split("=")[0] in card


def test_benchmark_weights_change_the_recommendation(tmp_path):
    proxy, _, proxy_tab, _ = _sweep(tmp_path, "two_domain")
    only = {}
    for bench in ("chartqa", "ocrbench"):
        res = write_report(proxy, None, tmp_path / f"out-{bench}", benchmark_weights={bench: 1.0}, n_boot=0)
        expected = max(proxy_tab, key=lambda m: proxy_tab[m][bench])
        assert res.analysis.recommended.mixture_id == expected
        assert res.analysis.benchmark_weights[bench] == 1.0
        only[bench] = expected
    data = json.loads((tmp_path / "out-chartqa" / "analysis.json").read_text())
    assert data["benchmark_weights"] == {"chartqa": 1.0, "mmbench": 0.0, "ocrbench": 0.0}


def test_unknown_benchmark_weight_errors_and_writes_nothing(tmp_path):
    proxy, _, _, _ = _sweep(tmp_path, "two_domain")
    with pytest.raises(ConfigError, match=r"unknown benchmark.*'mmmu'.*chartqa"):
        write_report(proxy, None, tmp_path / "out", benchmark_weights={"mmmu": 1})
    assert not (tmp_path / "out").exists()


def test_empty_or_absent_journal_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        write_report(empty, None, tmp_path / "out")
    with pytest.raises(ConfigError, match="no proxy journal"):
        write_report(tmp_path / "nope.jsonl", None, tmp_path / "out")
    truth_only = Journal(tmp_path / "truth_only.jsonl")
    mix = Mixture.from_mapping({"a": 0.5, "b": 0.5})
    truth_only.append(JournalRecord("truth", mix.key(), mix.as_dict(), "x", 0.5))
    with pytest.raises(ConfigError, match="holds truth scores only"):
        write_report(truth_only.path, None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truth_journal_without_the_sweep_mixtures_errors(tmp_path):
    proxy, _, _, _ = _sweep(tmp_path, "two_domain")
    other = Journal(tmp_path / "other_truth.jsonl")
    mix = Mixture.from_mapping({"general": 0.9, "ocr": 0.1})
    other.append(JournalRecord("truth", mix.key(), mix.as_dict(), "mmbench", 0.5))
    with pytest.raises(ConfigError, match="shares no mixture"):
        write_report(proxy, other.path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_out_dir_and_cleans_up_on_failure(tmp_path, monkeypatch):
    proxy, truth, _, _ = _sweep(tmp_path, "two_domain")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        write_report(proxy, truth, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    import merge_proxy.plots

    def boom(analysis, out_dir):
        (Path(out_dir) / "half.png").write_bytes(b"x")
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(merge_proxy.plots, "write_plots", boom)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_report(proxy, truth, tmp_path / "out2", n_boot=0)
    assert not (tmp_path / "out2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out2.partial-")]


def test_same_journal_for_proxy_and_truth_and_incomplete_mixture(tmp_path):
    """One journal may hold both modes; a mixture missing a benchmark is listed, not ranked."""
    j = Journal(tmp_path / "journal.jsonl")
    recs = []
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        mix = Mixture.from_mapping({"a": w, "b": 1 - w})
        for b in ("x", "y"):
            if w == 0.25 and b == "y":
                continue
            recs.append(JournalRecord("proxy", mix.key(), mix.as_dict(), b, w * (1 - w) + (0.1 if b == "x" else 0)))
            recs.append(JournalRecord("truth", mix.key(), mix.as_dict(), b, w * (1 - w) + 0.01 * w))
    j.append_many(recs)
    result = write_report(j.path, j.path, tmp_path / "out", n_boot=100)
    md = result.report.read_text()
    a = result.analysis
    assert a.recommended.mixture_id == "a=0.5,b=0.5"
    assert "Left out of the aggregate ranking" in md
    assert "`a=0.25,b=0.75`: no score on `y`" in md
    base = {b.name: b for b in a.baselines}
    assert base["uniform"].mixture_id == "a=0.5,b=0.5"
    assert base["best_single_expert"].mixture_id == "a=0,b=1"  # ties at 0.1: by mixture_id
    assert a.truth.aggregate.n == 4  # the incomplete mixture has no proxy aggregate to compare
    assert a.truth.aggregate.top1_hit == 1.0 and a.truth.aggregate.regret == 0.0
    assert "| aggregate | 4 |" in md


def test_render_report_is_deterministic(tmp_path):
    proxy, truth, _, _ = _sweep(tmp_path, "two_domain")
    a = write_report(proxy, truth, tmp_path / "a", n_boot=100, seed=3)
    b = write_report(proxy, truth, tmp_path / "b", n_boot=100, seed=3)
    assert a.report.read_text() == b.report.read_text()
    assert a.analysis_json.read_text().replace(str(tmp_path / "a"), "") == \
        b.analysis_json.read_text().replace(str(tmp_path / "b"), "")
    for pa, pb in zip(a.plots, b.plots):
        assert pa.read_bytes() == pb.read_bytes()
    assert render_report(a.analysis, [], "T").count("![") == 0


def test_card_experts_come_from_proxy_records_only(tmp_path):
    recs = []
    experts = [{"name": n, "source": f"org/{n}", "pinned": f"org/{n}@{SHA}", "revision": SHA} for n in ("a", "b")]
    for w in (0.25, 0.5, 0.75):
        mix = Mixture.from_mapping({"a": w, "b": 1 - w})
        recs.append(JournalRecord("proxy", mix.key(), mix.as_dict(), "x", w, experts=experts,
                                  base={"source": "base-proxy"}))
        recs.append(JournalRecord("truth", mix.key(), mix.as_dict(), "x", w,
                                  experts=[{"name": "truth", "source": "org/t", "pinned": "org/t@1", "revision": "1"}],
                                  base={"source": "base-truth"}))
    j = Journal(tmp_path / "journal.jsonl")
    j.append_many(recs)
    result = write_report(j.path, j.path, tmp_path / "out", n_boot=50)
    ctx = result_card_context(result.analysis, j.records())
    assert [e["name"] for e in ctx["experts"]] == ["a", "b"]
    assert ctx["base"] == {"source": "base-proxy"}
    assert ctx["recommended"]["mixture_id"] == "a=0.75,b=0.25"
    assert [c["benchmark"] for c in ctx["correlations"]] == ["aggregate", "x"]


def _table(records_spec, mode, names=("a", "b", "c")):
    """JournalRecords of ``mode`` from {weights: {benchmark: score}}."""
    out = []
    for weights, scores in records_spec.items():
        mix = Mixture.from_mapping(dict(zip(names, weights)))
        out += [JournalRecord(mode, mix.key(), mix.as_dict(), b, s) for b, s in scores.items()]
    return out


GRID3 = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]


def _journal(path: Path, records) -> Path:
    Journal(path).append_many(records)
    return path


def test_tie_at_the_top_is_reported_everywhere(tmp_path):
    """A proxy scoring every mixture alike: report.md, analysis.json and the card list all six as tied,
    rank them equally, and score top-k/regret as the expectation over the tied picks."""
    proxy = _journal(tmp_path / "p.jsonl", _table({w: {"x": 0.0, "y": 0.0} for w in GRID3}, "proxy"))
    truth_scores = {w: i / 10 for i, w in enumerate(GRID3)}
    truth = _journal(tmp_path / "t.jsonl", _table({w: {"x": s, "y": s} for w, s in truth_scores.items()}, "truth"))
    result = write_report(proxy, truth, tmp_path / "out", n_boot=0)
    ids = sorted(Mixture.from_mapping(dict(zip("abc", w))).key() for w in GRID3)
    md = result.report.read_text()
    assert "**Tie: 6 mixtures share the best aggregate proxy score:** " + ", ".join(f"`{m}`" for m in ids) in md
    ranking = md.split("## Ranking")[1].split("\n## ")[0]
    assert [line.split("|")[1].strip() for line in ranking.splitlines() if re.match(r"\| \d+ \|", line)] == ["1"] * 6
    data = json.loads(result.analysis_json.read_text())
    assert data["best"]["aggregate"] == ids
    assert [m["rank"] for m in data["mixtures"]] == [1] * 6
    regret = np.mean([0.5 - s for s in truth_scores.values()])  # the mean over six equally likely picks
    agg = data["truth"]["aggregate"]
    assert agg["top1_hit"] == pytest.approx(1 / 6) and agg["top3_hit"] == pytest.approx(3 / 6)
    assert agg["regret"] == pytest.approx(regret)
    row = next(line for line in md.splitlines() if line.startswith("| aggregate | 6 |"))
    assert "tie of 6" in row and "0.17 (tie)" in row and "0.50 (tie)" in row and f"{regret:.4f}" in row
    card = _render_card(result_card_context(result.analysis, Journal(proxy).records()))
    assert "**Tie:** 6 mixtures share the best aggregate proxy score: " + ", ".join(f"`{m}`" for m in ids) in card
    assert "0.17 (tie)" in card

    # One tied mixture never trained (not the one listed first): the verdict is about the tie, and does
    # not call the listed recommendation untrained.
    partial = _journal(tmp_path / "t2.jsonl", [r for r in Journal(truth).records() if r.mixture_id != ids[-1]])
    result2 = write_report(proxy, partial, tmp_path / "out2", n_boot=0)
    expected = (f"**not all trained**: of the 6 mixtures tied for the best proxy score, `{ids[-1]}` has no truth "
                "aggregate, so whether the proxy's pick beats the 5 trained mixtures is unknown")
    assert expected in result2.report.read_text()
    card2 = _render_card(result_card_context(result2.analysis, Journal(proxy).records()))
    assert (f"**Not all trained:** of the 6 mixtures tied for the best proxy score, `{ids[-1]}` has no truth run"
            in card2) and "**Not trained:**" not in card2


def test_untrained_recommendation_is_said_not_scored_as_a_hit(tmp_path):
    """The recommended mixture has no truth run: report and card say "not trained", the table is labelled
    "best among trained mixtures", and its top-1/regret are not presented as the recommendation's."""
    proxy_tab = {w: {"x": 0.1 * i, "y": 0.1 * i} for i, w in enumerate(GRID3)}
    proxy = _journal(tmp_path / "p.jsonl", _table(proxy_tab, "proxy"))
    truth = _journal(tmp_path / "t.jsonl", _table({w: s for w, s in list(proxy_tab.items())[:-1]}, "truth"))
    result = write_report(proxy, truth, tmp_path / "out", n_boot=0)
    rec = Mixture.from_mapping(dict(zip("abc", GRID3[-1]))).key()
    assert result.analysis.recommended.mixture_id == rec
    md = result.report.read_text()
    assert "**Not trained:**" in md.split("## Recommended mixture")[1].split("\n## ")[0]
    vs = md.split("## Proxy vs truth")[1]
    assert f"**The recommendation against truth:** **not trained** (`{rec}` has no truth aggregate)" in vs
    assert "top-1 and regret are n/a" in vs
    assert "| best among trained mixtures (proxy) |" in vs
    data = json.loads(result.analysis_json.read_text())
    check = data["truth"]["recommendation"]
    assert check["trained"] is False and check["top1_hit"] is None and check["regret"] is None
    card = _render_card(result_card_context(result.analysis, Journal(proxy).records()))
    assert "**Not trained:**" in card and "best among trained mixtures" in card

    # once trained: the recommendation's own top-1 and regret, by hand
    more = _table({GRID3[-1]: {"x": 0.3, "y": 0.3}}, "truth")
    truth2 = _journal(tmp_path / "t2.jsonl", Journal(truth).records() + more)
    md2 = write_report(proxy, truth2, tmp_path / "out2", n_boot=0).report.read_text()
    assert f"`{rec}` was trained: truth aggregate 0.3000" in md2
    assert "top-1 no, top-3 yes, regret 0.1000" in md2  # the best trained is 0.4, second in the proxy's order


def test_truth_lacking_a_weighted_benchmark_says_the_sets_differ(tmp_path):
    proxy_tab = {w: {"x": 0.1 * i, "y": 0.05 * i} for i, w in enumerate(GRID3)}
    proxy = _journal(tmp_path / "p.jsonl", _table(proxy_tab, "proxy"))
    truth = _journal(tmp_path / "t.jsonl", _table({w: {"x": s["x"]} for w, s in proxy_tab.items()}, "truth"))
    md = write_report(proxy, truth, tmp_path / "out", n_boot=0).report.read_text()
    note = "truth has no `y` score, so the truth aggregate averages only `x` while the proxy's recommendation averages `x`, `y`"
    assert f"**Different benchmark sets:** {note}." in md
    assert note in md.split("## Recommended mixture")[1].split("\n## ")[0]


def test_partial_truth_without_a_complete_mixture_still_plots_benchmarks(tmp_path):
    """Each trained mixture lacks one benchmark: no aggregate pairs, but every benchmark has pairs."""
    proxy_tab = {w: {"x": 0.1 * i, "y": 0.2 - 0.01 * i, "z": 0.3 * i} for i, w in enumerate(GRID3)}
    proxy = _journal(tmp_path / "p.jsonl", _table(proxy_tab, "proxy"))
    partial = {w: {b: s for j, (b, s) in enumerate(sc.items()) if j != i % 3} for i, (w, sc) in enumerate(proxy_tab.items())}
    truth = _journal(tmp_path / "t.jsonl", _table(partial, "truth"))
    result = write_report(proxy, truth, tmp_path / "out", n_boot=0)
    assert result.analysis.truth.aggregate.n == 0
    assert {c.n for c in result.analysis.truth.benchmarks} == {4}
    assert (tmp_path / "out" / "proxy_vs_truth.png").is_file()
    _assert_png(tmp_path / "out" / "proxy_vs_truth.png")
    md = result.report.read_text()
    assert "No mixture has truth on every weighted benchmark (`x`, `y`, `z`)" in md
    assert "With 0 mixtures" not in md
    assert "![proxy against truth](proxy_vs_truth.png)" in md


def test_score_vs_weight_gives_each_benchmark_its_own_axis(tmp_path, monkeypatch):
    """A 0-2000 benchmark beside 0-1 ones, and 11 benchmarks (more than tab10's colours): one panel per
    series, each y-axis spanning its own data only."""
    import merge_proxy.plots as plots

    benches = [f"b{i:02d}" for i in range(10)] + ["big"]
    tab = {}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        tab[(w, 1 - w)] = {b: (2000 * w if b == "big" else 0.5 + 0.1 * w * (i + 1) / 10) for i, b in enumerate(benches)}
    proxy = _journal(tmp_path / "p.jsonl", _table(tab, "proxy", names=("a", "b")))
    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    write_report(proxy, None, tmp_path / "out", n_boot=0)
    fig = figures[0]
    titles = {ax.get_title(): ax for ax in fig.axes}
    assert set(benches) <= set(titles) and any(t.startswith("aggregate") for t in titles)
    low, high = titles["b00"].get_ylim()
    assert high < 1.0  # not flattened by "big"'s 0-2000 range
    assert titles["big"].get_ylim()[1] >= 2000


def test_card_says_na_for_undefined_statistics_and_names_the_report_files(tmp_path):
    proxy = _journal(tmp_path / "p.jsonl", _table({w: {"x": 0.5} for w in GRID3}, "proxy"))
    truth = _journal(tmp_path / "t.jsonl", _table({w: {"x": 0.1 * i} for i, w in enumerate(GRID3)}, "truth"))
    result = write_report(proxy, truth, tmp_path / "out", n_boot=20)
    card = _render_card(result_card_context(result.analysis, Journal(proxy).records()))
    assert "nan" not in card.lower().replace("nano", "")
    assert "| aggregate | 6 | n/a | n/a | n/a |" in card
    assert "`report/report.md`" in card and "`report/analysis.json`" in card


def test_report_lists_the_best_mixture_per_benchmark(tmp_path):
    proxy_tab = {w: {"x": w[0], "y": w[1] + 0.01 * i} for i, w in enumerate(GRID3)}
    proxy = _journal(tmp_path / "p.jsonl", _table(proxy_tab, "proxy"))
    md = write_report(proxy, None, tmp_path / "out", n_boot=0).report.read_text()
    section = md.split("## Best mixture per benchmark")[1].split("\n## ")[0]
    for bench in ("x", "y"):
        best = max(proxy_tab, key=lambda w: proxy_tab[w][bench])
        key = Mixture.from_mapping(dict(zip("abc", best))).key()
        assert f"| {bench} | {proxy_tab[best][bench]:.4f} | `{key}` |" in section


def test_proxy_vs_truth_plot_marks_every_tied_pick(tmp_path, monkeypatch):
    import merge_proxy.plots as plots

    proxy = _journal(tmp_path / "p.jsonl", _table({w: {"x": 0.0} for w in GRID3}, "proxy"))
    truth = _journal(tmp_path / "t.jsonl", _table({w: {"x": i / 10} for i, w in enumerate(GRID3)}, "truth"))
    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figures.append((path.name, fig)), real_save(fig, path))[1])
    write_report(proxy, truth, tmp_path / "out", n_boot=0)
    fig = dict(figures)["proxy_vs_truth.png"]
    labels = {h.get_label(): h for h in fig.axes[0].collections}
    assert len(labels["proxy's pick (tie of 6)"].get_offsets()) == 6


def _dirichlet_sweep(tmp_path: Path, n: int, trained: list[int], *, tied: bool = False, incomplete: int = 0):
    """A Dirichlet sweep of ``n`` mixtures over 4 domains on 2 benchmarks; the mixtures at the indices
    ``trained`` have truth; the last ``incomplete`` mixtures lack benchmark ``y``. ``tied``: every proxy
    score is equal."""
    names = ("ocr", "chart", "general", "caption")
    rng = np.random.default_rng(1)
    precs, trecs = [], []
    for i in range(n):
        mix = Mixture.from_mapping(dict(zip(names, np.round(rng.dirichlet(np.ones(4)), 4).tolist())))
        for b in ("x", "y"):
            if b == "y" and i >= n - incomplete:
                continue
            s = 0.5 if tied else float(rng.uniform())
            precs.append(JournalRecord("proxy", mix.key(), mix.as_dict(), b, s))
            if i in trained:
                trecs.append(JournalRecord("truth", mix.key(), mix.as_dict(), b, s + float(rng.normal(0, 0.05))))
    return _journal(tmp_path / "p.jsonl", precs), _journal(tmp_path / "t.jsonl", trecs)


def test_large_sweep_report_stays_readable_and_ranking_csv_holds_every_mixture(tmp_path, caplog):
    """Thousands of mixtures (here 130): report.md shows the top 50 and then every trained mixture ranked
    lower, names the untrained ones by count, ranking.csv holds all of them with the analysis's exact
    numbers, 4 domains get the per-domain plot, and no log line lists every mixture."""
    import csv
    import logging

    proxy, truth = _dirichlet_sweep(tmp_path, 130, trained=list(range(0, 130, 10)))
    with caplog.at_level(logging.INFO, logger="merge_proxy"):
        result = write_report(proxy, truth, tmp_path / "out", n_boot=50)
    assert max(len(r.getMessage()) for r in caplog.records) < 2000
    a = result.analysis
    md = result.report.read_text()
    ranking = md.split("## Ranking")[1].split("\n## ")[0]
    assert "The top 50 of 130 mixtures by aggregate proxy score, then every lower-ranked mixture that was trained" in ranking
    assert "`ranking.csv` holds all 130." in ranking
    rows = [line for line in ranking.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    trained_below = [m.rank for m in a.mixtures[50:] if m.truth_aggregate is not None]
    assert len(trained_below) > 1 and trained_below[-1] < 130  # rows after the gap, gaps between them and at the end
    # a gap row wherever ranks skip (the ranks here are distinct), and after the last row shown
    expected, previous = [], 0
    for rank in [*range(1, 51), *trained_below]:
        expected += (["⋮"] if rank != previous + 1 else []) + [str(rank)]
        previous = rank
    assert [r.split("|")[1].strip() for r in rows] == expected + ["⋮"]
    assert all(r.count("|") == rows[0].count("|") for r in rows)  # the gap rows have every column
    assert "Without a truth run (left out of the comparison): 117 mixture(s), " in md
    assert "and 97 more." in md
    assert "score_vs_domain_weights.png" in md
    _assert_png(result.out_dir / "score_vs_domain_weights.png")

    with open(result.out_dir / "ranking.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["rank", "mixture_id", "weight/caption", "weight/chart", "weight/general",
                              "weight/ocr", "proxy/x", "proxy/y", "proxy/aggregate", "truth/x", "truth/y",
                              "truth/aggregate", "truth_rank"]
    assert [row["mixture_id"] for row in table] == [m.mixture_id for m in a.mixtures]
    for row, m in zip(table, a.mixtures):
        assert int(row["rank"]) == m.rank
        assert {d: float(row[f"weight/{d}"]) for d in a.domains} == m.weights
        assert float(row["proxy/aggregate"]) == m.aggregate and float(row["proxy/x"]) == m.scores["x"]
        if m.truth_aggregate is None:
            assert row["truth/aggregate"] == row["truth_rank"] == ""
        else:
            assert float(row["truth/aggregate"]) == m.truth_aggregate and int(row["truth_rank"]) == m.truth_rank


def test_large_tie_and_many_incomplete_mixtures_are_counted_not_listed(tmp_path, caplog):
    """130 mixtures tied at the top, 30 more lacking a benchmark: report and card name 20 of each and
    count the rest; one warning each, not one per mixture."""
    import logging

    proxy, truth = _dirichlet_sweep(tmp_path, 160, trained=[0, 1, 2], tied=True, incomplete=30)
    with caplog.at_level(logging.WARNING, logger="merge_proxy"):
        result = write_report(proxy, truth, tmp_path / "out", n_boot=0)
    md = result.report.read_text()
    assert "**Tie: 130 mixtures share the best aggregate proxy score:** " in md and " and 110 more." in md
    assert "- and 10 more (`analysis.json` lists every one under `incomplete`)" in md
    assert len(re.findall(r"^- `[^`]+`: no score on `y`$", md, flags=re.M)) == 20
    assert "tie of 3: " in md  # the trained mixtures tie too; a short tie is still listed whole
    warnings = [r.getMessage() for r in caplog.records if "left out of the aggregate ranking" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("30 proxy mixture(s) lack a score") and "and 20 more" in warnings[0]
    card = _render_card(result_card_context(result.analysis, Journal(proxy).records()))
    assert "**Tie:** 130 mixtures share the best aggregate proxy score: " in card
    assert "and 110 more (all in `report/ranking.csv`)." in card


@pytest.mark.parametrize("n,trained,top,gaps", [
    (50, [], "All mixtures by aggregate proxy score, with the truth aggregate where trained", 0),
    (51, [], "The top 50 of 51 mixtures", 1),
    (55, list(range(55)), "All mixtures by aggregate proxy score", 0),  # every one trained: nothing left out
])
def test_ranking_table_edges(tmp_path, n, trained, top, gaps):
    proxy, truth = _dirichlet_sweep(tmp_path, n, trained=trained or [0])
    md = write_report(proxy, truth, tmp_path / "out", n_boot=0).report.read_text()
    ranking = md.split("## Ranking")[1].split("\n## ")[0]
    assert top in ranking
    rows = [line for line in ranking.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert sum(r.startswith("| ⋮ |") for r in rows) == gaps
    assert len(rows) == min(n, 50) + gaps + (n - 50 if trained and n > 50 else 0)


def test_a_benchmark_tied_everywhere_is_counted_in_the_best_per_benchmark_table(tmp_path):
    proxy, truth = _dirichlet_sweep(tmp_path, 160, trained=[0], tied=True)
    md = write_report(proxy, truth, tmp_path / "out", n_boot=0).report.read_text()
    row = next(line for line in md.splitlines() if line.startswith("| x |"))
    assert "tie of 160: " in row and " and 140 more |" in row and len(row) < 3000


def test_card_of_a_report_without_ranking_csv_does_not_point_to_it(tmp_path):
    """push-results --report DIR of a report written before ranking.csv existed: the card must not name
    a file the push does not upload."""
    proxy, truth = _dirichlet_sweep(tmp_path, 60, trained=[0], tied=True)
    result = write_report(proxy, truth, tmp_path / "out", n_boot=0)
    records = Journal(proxy).records()
    with_csv = _render_card(result_card_context(result.analysis, records))
    without = _render_card(result_card_context(result.analysis, records, ranking_csv=False))
    assert "`report/ranking.csv`" in with_csv and "and 40 more (all in `report/ranking.csv`)." in with_csv
    assert "ranking.csv" not in without and "and 40 more." in without


def test_the_result_card_names_a_local_base_by_its_folder_only():
    """The card is public; the sweeping machine's paths (a user name in /home/alice) are not."""
    from merge_proxy.report import _base_label

    sha = "a" * 40
    assert _base_label({"source": "Qwen/Qwen2-VL-2B", "pinned": f"Qwen/Qwen2-VL-2B@{sha}", "revision": sha}) == \
        f"`Qwen/Qwen2-VL-2B` at commit `{sha}`"
    assert _base_label({"source": "../models/qwen2vl", "pinned": "/home/alice/models/qwen2vl", "revision": None}) == \
        "a local directory, `qwen2vl`"
    assert _base_label({}) is None
