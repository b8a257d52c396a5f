"""The tiny models: deterministic, loadable by the Auto classes, trainable by the real LLaMA-Factory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from merge_proxy.testing.tiny_vlm import SPECIAL_TOKENS, build_tiny_vlm
from merge_proxy.testing.training import tiny_sft_config

SCRIPTS = Path(sys.executable).parent


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tiny_vlm):
    again = build_tiny_vlm(tmp_path / "again", seed=0)
    other = build_tiny_vlm(tmp_path / "other", seed=1)
    weights = "model.safetensors"
    assert sha256(again.path / weights) == sha256(tiny_vlm.path / weights)
    assert sha256(other.path / weights) != sha256(tiny_vlm.path / weights)
    assert sha256(again.path / "tokenizer.json") == sha256(tiny_vlm.path / "tokenizer.json")


def test_refuses_non_empty_directory(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_vlm(tmp_path / "m")
    assert (tmp_path / "m" / "keep.txt").read_text() == "mine"


def test_loads_with_auto_classes_and_generates_from_an_image(tiny_vlm):
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_vlm.path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_vlm.path)
    processor = AutoProcessor.from_pretrained(tiny_vlm.path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm.path).eval()
    assert config.model_type == "qwen2_vl"
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert 100_000 < tiny_vlm.num_parameters < 1_000_000
    # The config's special ids are the tokenizer's.
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert set(SPECIAL_TOKENS) <= set(tokenizer.get_vocab())
    # Byte-level: any text round-trips.
    text = "Wie viele Formen? ½ → 3"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>What colour is the shape?<|im_end|>" in prompt
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
    # A 56x56 image is 4x4 patches of 14 px, merged 2x2: 4 image tokens.
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 4
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_module_cli_builds_a_model(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "merge_proxy.testing", "tiny-vlm", str(tmp_path / "m"), "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path / "m") in proc.stdout
    assert json.loads((tmp_path / "m" / "tiny_vlm.json").read_text())["seed"] == 3
    again = subprocess.run(
        [sys.executable, "-m", "merge_proxy.testing", "tiny-vlm", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode != 0
    assert "not empty" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize(
    ("family", "architecture", "dtype", "image_line"),
    [
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", torch.float32, "<|vision_start|><|image_pad|><|vision_end|>"),
        ("internvl", "InternVLForConditionalGeneration", torch.bfloat16, "<IMG_CONTEXT>\n"),
    ],
)
def test_module_cli_builds_the_other_families(tmp_path: Path, family, architecture, dtype, image_line):
    """Each family as its Hub checkpoints come: the processor prompts in its format and expands an
    image to its tokens (InternVL: one 56 px tile, 4 tokens between <img> and </img>)."""
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    proc = subprocess.run(
        [sys.executable, "-m", "merge_proxy.testing", "tiny-vlm", str(tmp_path / "m"), "--family", family],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert config.architectures == [architecture]
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m", dtype="auto").eval()
    assert model.dtype == dtype
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert f"<|im_start|>user\n{image_line}What colour is the shape?<|im_end|>\n<|im_start|>assistant\n" in prompt
    inputs = processor(text=[prompt], images=[Image.new("RGB", (56, 56), "red")], return_tensors="pt")
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 4
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]

    wrong = subprocess.run(
        [sys.executable, "-m", "merge_proxy.testing", "tiny-vlm", str(tmp_path / "n"), "--family", "llava"],
        capture_output=True, text=True, timeout=300,
    )
    assert wrong.returncode == 2 and "invalid choice: 'llava'" in wrong.stderr


@pytest.mark.slow
def test_llamafactory_cli_lora_trains_the_tiny_model(tmp_path: Path, tiny_vlm, domains):
    """The real `llamafactory-cli train` LoRA-trains the tiny model on a synthetic domain."""
    from safetensors.torch import load_file

    out = tmp_path / "expert"
    config = tiny_sft_config(tiny_vlm.path, domains.llamafactory_dir, domains.train_datasets["color"], out, max_steps=4)
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(SCRIPTS / "llamafactory-cli"), "train", str(cfg_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["r"] == 8
    # LLaMA-Factory resolves `lora_target: all` to the full module paths of the language model.
    targets = set(adapter_config["target_modules"])
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(t.startswith("model.language_model.layers.") for t in targets)
    tensors = load_file(out / "adapter_model.safetensors")
    # LoRA on every language-model linear layer of both blocks, none on the frozen vision tower.
    assert sum(k.endswith("lora_A.weight") for k in tensors) == 2 * 7
    assert not any("visual" in k for k in tensors)
    # lora_B starts at zero: training moved it.
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert log[-1]["current_steps"] == 4
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in log if "loss" in row)


@pytest.mark.slow
def test_lmms_eval_cli_evaluates_the_tiny_model_on_a_synthetic_task(tmp_path: Path, tiny_vlm, domains):
    """The real `lmms-eval` CLI, its built-in qwen2_vl wrapper, a synthetic task via --include_path."""
    from merge_proxy.testing.lmms import run_lmms_eval

    run = run_lmms_eval(
        "qwen2_vl",
        f"pretrained={tiny_vlm.path},device_map=cpu,device=cpu",
        [domains.tasks["color"], domains.tasks["digit"]],
        tmp_path / "eval",
        include_path=domains.lmms_eval_dir,
    )
    assert run.results_file.is_file()
    for domain in ("color", "digit"):
        task = domains.tasks[domain]
        assert 0.0 <= run.metric(task) <= 1.0
        samples = run.samples(task)
        assert len(samples) == domains.eval_size
        assert all(isinstance(answer, str) for answer in run.responses(task).values())
        assert sorted(s["target"] for s in samples) == sorted(
            json.loads(line)["answer"]
            for line in (domains.lmms_eval_dir / domain / "data.jsonl").read_text().splitlines()
        )
        # The score is the mean of the per-sample exact matches lmms-eval logged.
        per_sample = [s["exact_match"] for s in samples]
        assert run.metric(task) == pytest.approx(sum(per_sample) / len(per_sample))
