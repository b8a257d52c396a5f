"""`merge-proxy report` and `push-results` from the command line, against the Hub emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
                "report/analysis.json", "report/ternary_aggregate.png", "report/proxy_vs_truth.png"} <= files
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
