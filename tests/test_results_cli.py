"""`merge-proxy report` and `push-results` from the command line, against the Hub emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from merge_proxy.generators import grid
from merge_proxy.journal import Journal, JournalRecord
from merge_proxy.testing.hub import HubEmulator

SCRIPTS = Path(sys.executable).parent
SHA = "a" * 40


def sweep_dir(tmp_path: Path, mode: str, every: int = 1) -> Path:
    out = tmp_path / mode
    experts = [{"name": n, "source": f"tester/{n}", "pinned": f"tester/{n}@{SHA}", "revision": SHA} for n in "abc"]
    records = []
    for i, m in enumerate(grid(["a", "b", "c"], 0.25)):
        if i % every:
            continue
        w = m.as_dict()
        for task, coef in (("t1", (0.9, 0.2, 0.1)), ("t2", (0.1, 0.3, 0.8))):
            score = sum(c * w[n] for c, n in zip(coef, "abc")) + (0.01 * i if mode == "truth" else 0)
            records.append(JournalRecord(mode, m.key(), w, task, score, {"exact_match,none": score},
                                         {"source": "tester/base", "pinned": f"tester/base@{SHA}"}, experts))
    Journal(out / "journal.jsonl").append_many(records)
    (out / "recipe.yaml").write_text(yaml.safe_dump({"benchmarks": [{"task": "t1", "weight": 3}, "t2"]}))
    return out


def test_report_then_push_results_in_one_commit(tmp_path):
    from huggingface_hub import DatasetCard, HfApi

    proxy, truth = sweep_dir(tmp_path, "proxy"), sweep_dir(tmp_path, "truth", every=2)
    report = subprocess.run([str(SCRIPTS / "merge-proxy"), "report", str(proxy), "--truth", str(truth)],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    # t1 weighs 3: the aggregate favours expert a, whose t1 coefficient is highest.
    assert "recommended mixture: a=1,b=0,c=0" in report.stdout
    text = (proxy / "report" / "report.md").read_text()
    assert "`t1` × 0.750" in text and "Spearman" in text

    with HubEmulator(tmp_path / "hub") as hub:
        env = {**os.environ, **hub.client_env(hf_home=tmp_path / "hf")}
        pushed = subprocess.run([str(SCRIPTS / "merge-proxy"), "push-results", str(proxy), "--truth", str(truth),
                                 "--repo", "tester/search", "--report", str(proxy / "report")],
                                capture_output=True, text=True, timeout=300, env=env)
        assert pushed.returncode == 0, pushed.stderr
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        files = set(api.list_repo_files("tester/search", repo_type="dataset"))
        assert {"journal.jsonl", "truth.jsonl", "recipe.yaml", "README.md", "report/report.md",
                "report/analysis.json", "report/ranking.csv", "report/ternary_aggregate.png", "report/proxy_vs_truth.png"} <= files
        commits = api.list_repo_commits("tester/search", repo_type="dataset")
        assert [c.title for c in commits][0] == "merge-proxy results" and len(commits) == 2
        card = DatasetCard.load(api.hf_hub_download("tester/search", "README.md", repo_type="dataset",
                                                    cache_dir=tmp_path / "c"))
        assert "merge-proxy-results" in card.data.tags
        assert f"`tester/a@{SHA}`" in card.text and "- `a`: 1.0000" in card.text
        assert "| aggregate |" in card.text
        assert hub.token not in pushed.stdout + pushed.stderr + card.content

    missing = subprocess.run([str(SCRIPTS / "merge-proxy"), "report", str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no journal at" in missing.stderr
    # An output path that cannot be written: one line naming it and the cause, no traceback.
    (tmp_path / "afile").write_text("x")
    blocked = subprocess.run([str(SCRIPTS / "merge-proxy"), "report", str(proxy), "--out", str(tmp_path / "afile" / "r")],
                             capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 2 and "Traceback" not in blocked.stderr
    assert blocked.stderr.strip().splitlines()[-1] == (
        f"merge-proxy report: error: output {tmp_path / 'afile' / 'r'} is under {tmp_path / 'afile'}, which is a "
        "file; choose another --out"), blocked.stderr


def test_push_results_with_a_token_that_cannot_push_says_what_to_do(tmp_path):
    """An expired token and one of another user: the Hub's refusal, the fix, and never the token."""
    proxy = sweep_dir(tmp_path, "proxy")
    with HubEmulator(tmp_path / "hub", tokens={"hf_test_tester_token": "tester", "hf_other": "other"}) as hub:
        for token, fix in (("hf_expired", "is invalid or expired: log in again or fix HF_TOKEN"),
                           ("hf_other", "may not do this in tester: use a token with the access it needs")):
            env = {**os.environ, **hub.client_env(token=token, hf_home=tmp_path / f"hf-{token}")}
            pushed = subprocess.run([str(SCRIPTS / "merge-proxy"), "push-results", str(proxy), "--repo",
                                     "tester/search"], capture_output=True, text=True, timeout=300, env=env)
            last = pushed.stderr.strip().splitlines()[-1]
            assert pushed.returncode == 2 and fix in last, pushed.stderr[-2000:]
            assert token not in pushed.stdout + pushed.stderr


def _push(tmp_path, hub, proxy, **kwargs) -> str:
    from merge_proxy.hub import HubOptions
    from merge_proxy.results import push_results

    return push_results(proxy, "tester/search", hub=HubOptions(endpoint=hub.endpoint, token=hub.token), **kwargs)


def _pushed(hub, tmp_path, name: str) -> Path:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=hub.token)
    return Path(api.hf_hub_download("tester/search", name, repo_type="dataset", cache_dir=tmp_path / "c"))


def test_push_with_report_builds_the_card_from_that_report(tmp_path):
    """The report was made with --weights t2=1 and a title; the recipe weighs t1 3:1. The card must
    show the report's recommendation, weights and title (before, it recomputed with the recipe's)."""
    import json

    import pytest

    from merge_proxy.errors import ConfigError
    from merge_proxy.results import make_report

    proxy, truth = sweep_dir(tmp_path, "proxy"), sweep_dir(tmp_path, "truth", every=2)
    result = make_report(proxy, truth, tmp_path / "rep", weights="t2=1", title="Only t2")
    data = json.loads((tmp_path / "rep" / "analysis.json").read_text())
    rec = data["recommended"]["mixture_id"]
    assert rec == result.analysis.recommended.mixture_id == "a=0,b=0,c=1"  # t2 favours c; t1 (recipe) favours a
    with HubEmulator(tmp_path / "hub") as hub:
        _push(tmp_path, hub, proxy, report_dir=tmp_path / "rep")  # no --truth: the report's truth is pushed
        card = _pushed(hub, tmp_path, "README.md").read_text()
        assert "# Only t2" in card
        for name, weight in data["recommended"]["weights"].items():
            assert f"- `{name}`: {weight:.4f}" in card
        assert f"{data['truth']['aggregate']['spearman']['value']:.3f}" in card
        assert _pushed(hub, tmp_path, "truth.jsonl").read_text() == (truth / "journal.jsonl").read_text()

        with pytest.raises(ConfigError, match=r"--weights t1=1 differ from the weights of the report"):
            _push(tmp_path, hub, proxy, report_dir=tmp_path / "rep", weights="t1=1")
        other = sweep_dir(tmp_path / "other", "truth")
        with pytest.raises(ConfigError, match="does not hold the truth scores of the report"):
            _push(tmp_path, hub, proxy, report_dir=tmp_path / "rep", truth=other)

        # Inputs are matched by content: the same sweep moved elsewhere (another machine) still pushes ...
        import dataclasses
        import shutil

        moved = tmp_path / "moved"
        for source in (tmp_path / "rep", proxy, truth):
            shutil.copytree(source, moved / source.name)
        _push(tmp_path, hub, moved / "proxy", report_dir=moved / "rep", truth=moved / "truth")
        # ... but scores added after the report are refused: the card would not describe them
        journal = Journal(moved / "proxy" / "journal.jsonl")
        journal.append(dataclasses.replace(journal.records()[0], score=0.123))
        with pytest.raises(ConfigError, match="was made from other proxy scores"):
            _push(tmp_path, hub, moved / "proxy", report_dir=moved / "rep", truth=moved / "truth")


def test_pushed_results_load_with_datasets(tmp_path):
    import datasets
    from huggingface_hub import DatasetCard, snapshot_download

    proxy, truth = sweep_dir(tmp_path, "proxy"), sweep_dir(tmp_path, "truth", every=2)
    with HubEmulator(tmp_path / "hub") as hub:
        _push(tmp_path, hub, proxy, truth=truth)
        local = Path(snapshot_download("tester/search", repo_type="dataset", endpoint=hub.endpoint,
                                       token=hub.token, local_dir=tmp_path / "snap"))
    card = DatasetCard.load(local / "README.md")
    assert "`report/report.md`" in card.text and "`report/analysis.json`" in card.text
    assert "Merged onto the base model `tester/base`." in card.text
    for config, sweep in (("proxy", proxy), ("truth", truth)):
        expected = Journal(sweep / "journal.jsonl").records()
        ds = datasets.load_dataset(str(local), config, split="train", cache_dir=str(tmp_path / "dscache"))
        assert ds.num_rows == len(expected), config
        assert ds["mixture_id"] == [r.mixture_id for r in expected]
        assert ds["score"] == [r.score for r in expected]
    assert card.data.pretty_name == json.loads((local / "report" / "analysis.json").read_text())["title"]
    assert card.data.size_categories == ["n<1K"]


def test_a_second_push_replaces_the_first_entirely(tmp_path):
    """Re-pushing without truth leaves no truth.jsonl (nor its plot) from the first push beside a card
    that says there is no truth."""
    from huggingface_hub import HfApi

    proxy, truth = sweep_dir(tmp_path, "proxy"), sweep_dir(tmp_path, "truth", every=2)
    with HubEmulator(tmp_path / "hub") as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        _push(tmp_path, hub, proxy, truth=truth)
        first = set(api.list_repo_files("tester/search", repo_type="dataset"))
        _push(tmp_path, hub, proxy)
        second = set(api.list_repo_files("tester/search", repo_type="dataset"))
    assert "truth.jsonl" in first and "truth.jsonl" not in second
    assert second < first and all(not f.startswith("report/proxy_vs_truth") for f in second)


def test_report_reads_scores_still_in_shard_journals(tmp_path, caplog):
    """A sweep interrupted before gathering: some scores only in OUT/shards/*.jsonl, even all of them."""
    import logging

    from merge_proxy.results import make_report

    full = sweep_dir(tmp_path, "proxy")
    records = Journal(full / "journal.jsonl").records()
    mixtures = sorted({r.mixture_id for r in records})
    for name, keep in (("half", mixtures[::2]), ("none", [])):
        out = tmp_path / name
        out.mkdir()
        main = [r for r in records if r.mixture_id in keep]
        if main:
            Journal(out / "journal.jsonl").append_many(main)
        shard = [r for r in records if r.mixture_id not in keep]
        Journal(out / "shards" / "job-1.jsonl").append_many(shard + main[:2])  # duplicates are deduped
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="merge_proxy.results"):
            result = make_report(out, None, out / "report")
        assert {m.mixture_id for m in result.analysis.mixtures} == set(mixtures), name
        assert f"{len(shard)} score(s) are only in the shard journals" in caplog.text
        assert "rerun `merge-proxy sweep`" in caplog.text


def test_weights_option_errors_name_the_benchmark(tmp_path):
    import pytest

    from merge_proxy.errors import ConfigError
    from merge_proxy.results import benchmark_weights, locate

    inputs = locate(sweep_dir(tmp_path, "proxy"))
    with pytest.raises(ConfigError, match=r"weight of benchmark 't1' is 'abc', not a number"):
        benchmark_weights(inputs, "t1=abc")
    assert benchmark_weights(inputs, "t1=2,t2=0.5") == {"t1": 2.0, "t2": 0.5}
    assert benchmark_weights(inputs, "t1=2;t2=0") == {"t1": 2.0, "t2": 0.0}
    assert benchmark_weights(inputs, "refcoco+_bbox_val=2;t1=1,t2=0") == {"refcoco+_bbox_val": 2.0, "t1": 1.0, "t2": 0}


@pytest.mark.parametrize("text, message", [
    ("t1=1,t1=2", "weight for benchmark 't1' given twice"),
    ("t1=-1", "weight of benchmark 't1' is -1; use a finite weight >= 0"),
    ("t1=nan", "weight of benchmark 't1' is 'nan'; weights must be finite"),
    ("t1", "need the benchmarks' order; write NAME=W instead (e.g. --weights chartqa=2,gqa=1)"),
    ("t1=1,2", "mix of named and positional weights"),
    (" , ", "no weights given"),
    ("t 1=1", "invalid benchmark name 't 1'"),
])
def test_weights_option_rejects_what_the_mixture_parser_rejects(tmp_path, text, message):
    from merge_proxy.errors import ConfigError
    from merge_proxy.results import benchmark_weights, locate

    with pytest.raises(ConfigError) as err:
        benchmark_weights(locate(sweep_dir(tmp_path, "proxy")), text)
    assert message in str(err.value)


def test_journals_given_the_other_way_round_say_which_goes_where(tmp_path):
    proxy, truth = sweep_dir(tmp_path, "proxy"), sweep_dir(tmp_path, "truth", every=2)
    swapped = subprocess.run([str(SCRIPTS / "merge-proxy"), "report", str(truth), "--truth", str(proxy)],
                             capture_output=True, text=True, timeout=300)
    assert swapped.returncode == 2
    assert swapped.stderr.strip().endswith("the proxy journal holds truth scores only (a sweep of mode truth): pass "
                                           "it with --truth, after the proxy sweep's directory")
    assert not (truth / "report").exists()


def test_a_journal_line_of_an_earlier_version_reads_back_byte_for_byte():
    """Reports compare journals by the digest of their records' JSON: a field added since (truth
    models' model_fingerprint) must not change the JSON of records that lack it, or every report made
    before it would be refused at push as "made from other scores"."""
    import json

    from merge_proxy.journal import JournalRecord, records_digest

    line = ('{"base":{},"benchmark":"t1","experts":[],"lmms_eval_version":"0.7.3","metrics":{"exact_match,none":0.5},'
            '"mixture_id":"a=0.5,b=0.5","mode":"truth","model":"org/m@' + SHA + '","schema":"merge-proxy/journal",'
            '"schema_version":1,"score":0.5,"settings":{},"timings":{"eval_s":1.0},"weights":{"a":0.5,"b":0.5}}')
    record = JournalRecord.from_dict(json.loads(line))
    assert record.to_json() == line
    fingerprinted = JournalRecord.from_dict({**json.loads(line), "model_fingerprint": "local:0123456789abcdef"})
    assert json.loads(fingerprinted.to_json())["model_fingerprint"] == "local:0123456789abcdef"
    assert records_digest([record]) != records_digest([fingerprinted])


def test_records_of_one_read_share_equal_provenance_only(tmp_path):
    """A million records repeat one base, experts and settings: read once, not a million times; a
    record whose provenance differs keeps its own."""
    from merge_proxy.journal import Journal, JournalRecord

    base, other = {"source": "org/base", "pinned": f"org/base@{SHA}"}, {"source": "org/other"}
    journal = Journal(tmp_path / "journal.jsonl")
    journal.append_many([JournalRecord("proxy", f"a={w},b={1 - w}", {"a": w, "b": 1 - w}, "t1", w, base=b,
                                       settings={"limit": None}) for w, b in ((0.25, base), (0.5, base), (0.75, other))])
    first, second, third = journal.records()
    assert first.base is second.base and first.settings is second.settings
    assert (first.base, third.base) == (base, other)
