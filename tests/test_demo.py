"""`merge-proxy demo` at its smallest scale: the main job end to end, as CI runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(sys.executable).parent


@pytest.mark.slow
def test_demo_runs_end_to_end_and_recommends_a_mixture(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([str(SCRIPTS / "merge-proxy"), "demo", "--scale", "small", "--out", str(out)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recommended = re.search(r"recommended mixture:\s+(\S+)", proc.stdout).group(1)
    report = (out / "report" / "report.md").read_text()
    assert f"**`{recommended}`**" in report
    best = json.loads((out / "report" / "analysis.json").read_text())["best"]["aggregate"]
    assert (f"tied with {len(best) - 1} other mixture(s)" in proc.stdout) == (len(best) > 1)
    assert "## Proxy vs truth" in report
    for png in ("ternary_aggregate.png", "proxy_vs_truth.png"):  # three domains: no weight-line plot
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    proxy = [json.loads(line) for line in (out / "sweep" / "journal.jsonl").read_text().splitlines()]
    truth = [json.loads(line) for line in (out / "truth" / "journal.jsonl").read_text().splitlines()]
    assert len(proxy) == 6 * 3 and len(truth) == 4 * 3  # grid step 0.5 over 3 domains; 4 trained mixtures
    assert any(r["score"] > 0 for r in proxy)  # the experts learned something: scores are not all zero
    assert {r["experts"][0]["pinned"].split("@")[0] for r in proxy} == {"tester/tiny-qwen2-vl-color-expert"}
    assert "datasets/tester/tiny-mixture-search/commit/" in proc.stdout
    # The printed command serves the stopped emulator's repositories again, at the printed address.
    url = re.search(r"result card:\s+(\S+)", proc.stdout).group(1)
    serve = re.search(r"`python -m (merge_proxy\.testing hub --data \S+ --port \d+)` serves it again", proc.stdout)
    server = subprocess.Popen([sys.executable, "-m", *serve.group(1).split()], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        import socket
        import time
        from urllib.parse import urlsplit

        endpoint = url.split("/datasets/")[0]
        for _ in range(150):  # refused until it listens
            try:
                socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token="hf_test_tester_token")
        info = api.dataset_info("tester/tiny-mixture-search")
        assert info.sha == url.rsplit("/", 1)[1]
        expert = api.model_info("tester/tiny-qwen2-vl-color-expert")  # the card's metadata, as the Hub indexes it
        assert {"license:apache-2.0", "lora", "base_model:adapter:tester/tiny-qwen2-vl"} <= set(expert.tags)
        assert expert.pipeline_tag == "image-text-to-text"
    finally:
        server.terminate()
        server.wait(timeout=30)
    # Rerunning into the same directory replaces the earlier demo; a foreign directory is refused.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    refused = subprocess.run([str(SCRIPTS / "merge-proxy"), "demo", "--out", str(foreign)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "was not made by the demo" in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep"
