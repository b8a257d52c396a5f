"""Damaged or foreign files a user hands us end in one line naming the file and the fix, never a traceback."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from merge_proxy.errors import CheckpointError, ConfigError
from merge_proxy.journal import Journal, JournalRecord

SCRIPTS = Path(sys.executable).parent


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "merge-proxy"), *args], capture_output=True, text=True, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, last


def test_a_git_lfs_pointer_is_named_as_such(tmp_path):
    from merge_proxy.safetensors_io import SafetensorsReader

    pointer = tmp_path / "model.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4400000000\n")
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file .*Git LFS pointer"):
        SafetensorsReader(pointer)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # header says 16 bytes, 2 follow
    with pytest.raises(CheckpointError, match="cut short"):
        SafetensorsReader(cut)


def test_an_unknown_tensor_dtype_is_named(tmp_path):
    from merge_proxy.safetensors_io import SafetensorsReader

    header = json.dumps({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    path = tmp_path / "f4.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\x00")
    with pytest.raises(CheckpointError, match=r"stores tensors of dtype F4, which merge-proxy cannot read"):
        SafetensorsReader(path)


def test_merge_of_a_base_transformers_cannot_read(tmp_path, tiny_vlm, lora_experts):
    base = tmp_path / "base"
    shutil.copytree(tiny_vlm.path, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "model_type": "qwen9_vl_future"}))
    proc = cli("merge", "--base", str(base), "--expert", f"a={lora_experts['a']}", "--weights", "a=1",
               "--out", str(tmp_path / "out"))
    one_line_error(proc, "cannot read the config of", "qwen9_vl_future", "use a base model transformers can load")
    assert not (tmp_path / "out").exists()


def test_publish_of_a_damaged_expert_json(tmp_path):
    out = tmp_path / "saves"
    out.mkdir()
    (out / "expert.json").write_text('{"domain": "ocr", ')
    one_line_error(cli("publish", str(out), "--repo", "tester/x"), "expert.json is not valid JSON",
                   "pass --domain and --base-model")


def test_push_results_with_a_damaged_analysis_json(tmp_path):
    from merge_proxy.report import load_analysis

    (tmp_path / "analysis.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"analysis.json is not valid JSON .*rerun `merge-proxy report`"):
        load_analysis(tmp_path)


def _journal(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    Journal(sweep / "journal.jsonl").append_many(
        [JournalRecord("proxy", f"a={w},b={1 - w}", {"a": w, "b": 1 - w}, "t1", w) for w in (0.25, 0.5, 0.75)])
    return sweep


def test_report_of_a_sweep_whose_recipe_lost_a_task_name(tmp_path):
    sweep = _journal(tmp_path)
    (sweep / "recipe.yaml").write_text(yaml.safe_dump({"benchmarks": [{"weight": 2}]}))
    one_line_error(cli("report", str(sweep)), "recipe.yaml: benchmark {'weight': 2} is not a task name",
                   "--weights TASK=W")
    assert not (sweep / "report").exists()


def test_a_journal_line_without_the_required_fields_is_skipped_with_a_warning(tmp_path, caplog):
    sweep = _journal(tmp_path)
    with (sweep / "journal.jsonl").open("a") as fh:
        fh.write(json.dumps({"schema": "merge-proxy/journal", "mode": "proxy", "mixture_id": "x"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="merge_proxy.journal"):
        records = Journal(sweep / "journal.jsonl").records()
    assert len(records) == 3
    assert "journal.jsonl:4: ignoring a record without weights, benchmark, score" in caplog.text


def test_a_reader_that_goes_away_is_no_error(tmp_path):
    """`merge-proxy sweep RECIPE --dry-run | head -1`: quiet, as any command killed by SIGPIPE."""
    import os

    proc = subprocess.Popen([str(SCRIPTS / "merge-proxy"), "sweep", "qwen2vl-2b-4dom", "--dry-run"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.stdout.readline().startswith("sweep qwen2vl-2b-4dom (proxy): 0 of 350 scores done")
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert "error" not in proc.stderr.read()


def test_a_file_that_is_no_journal_and_a_journal_that_is_a_directory(tmp_path):
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"hello": 1}\n')
    one_line_error(cli("report", str(notes)), f"{notes} holds no merge-proxy journal record",
                   "the journal.jsonl `merge-proxy sweep` wrote")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "base": "org/base", "experts": {"a": "org/a", "b": "org/b"},
                                      "mixtures": [{"grid": {"step": 0.5}}], "benchmarks": ["t"]}))
    (tmp_path / "out" / "journal.jsonl").mkdir(parents=True)
    one_line_error(cli("sweep", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"),
                   "journal.jsonl is a directory, where the sweep appends its journal")


def test_a_download_cut_in_the_data_and_a_recipe_with_a_yaml_tag(tmp_path):
    import torch
    from safetensors.torch import save_file

    from merge_proxy.recipe import load_recipe
    from merge_proxy.report import load_analysis
    from merge_proxy.safetensors_io import SafetensorsReader

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"its tensors end at byte \d+, the file at \d+\); .*cut short"):
        SafetensorsReader(path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nbase: !env BASE_MODEL\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:2: could not determine a constructor for the tag '!env'; "
                                          r"a recipe is plain YAML"):
        load_recipe(recipe)
    (tmp_path / "analysis.json").write_text("[1]")
    with pytest.raises(ConfigError, match=r"is not an analysis \(a JSON object\)"):
        load_analysis(tmp_path)
