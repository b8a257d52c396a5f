"""`python -m merge_proxy.testing`: the kit from a shell, as users' scripts and CI call it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path


def test_domains_command_writes_both_layouts(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "merge_proxy.testing", "domains", str(tmp_path / "d"), "--domains", "color,digit",
         "--train", "4", "--eval", "2", "--seed", "5"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"lmms-eval include_path: {tmp_path / 'd' / 'lmms_eval'}" in proc.stdout
    info = json.loads((tmp_path / "d" / "llamafactory" / "dataset_info.json").read_text())
    assert set(info) == {"synth_color", "synth_color_eval", "synth_digit", "synth_digit_eval"}
    rows = (tmp_path / "d" / "lmms_eval" / "digit" / "data.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_domains_command_rejects_unknown_domain(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "merge_proxy.testing", "domains", str(tmp_path / "d"), "--domains", "smell"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "smell" in proc.stderr and "Traceback" not in proc.stderr


def test_hub_command_prints_endpoint_and_authenticates(tmp_path: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "merge_proxy.testing", "hub", "--port", "0", "--data", str(tmp_path / "hub"),
         "--token", "alice=hf_alice", "--token", "hf_default"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:")
        for token, user in (("hf_alice", "alice"), ("hf_default", "tester")):
            request = urllib.request.Request(f"{endpoint}/api/whoami-v2", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["name"] == user
    finally:
        proc.terminate()
        proc.wait(timeout=30)
