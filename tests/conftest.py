"""Shared test set-up: an isolated Hugging Face cache and session-wide tiny artefacts.

The tiny model and the synthetic domains are built once per session (seconds each) and treated as
read-only by the tests; a test that needs to change one copies it first.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Set before any test imports huggingface_hub (it reads these at import time): no telemetry, no
# token from the developer's own machine, and a cache that cannot touch ~/.cache.
_HF_HOME = tempfile.mkdtemp(prefix="merge-proxy-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_TOKEN", None)
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["WANDB_DISABLED"] = "true"

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Qwen2-VL checkpoint directory (seed 0), shared by the session; do not modify it."""
    from merge_proxy.testing.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "qwen2-vl-tiny", seed=0)


@pytest.fixture(scope="session")
def domains(tmp_path_factory: pytest.TempPathFactory):
    """Synthetic domains (all of them, small splits) written for LLaMA-Factory and lmms-eval."""
    from merge_proxy.testing.domains import write_domains

    return write_domains(tmp_path_factory.mktemp("domains"), train=32, eval=8, seed=0)


@pytest.fixture(scope="session")
def lora_experts(tmp_path_factory: pytest.TempPathFactory, tiny_vlm) -> dict[str, Path]:
    """Three random LoRA experts of the tiny model exercising rank, rsLoRA and alpha_pattern scaling."""
    from merge_proxy.testing.experts import make_lora_expert

    root = tmp_path_factory.mktemp("lora-experts")
    return {
        "a": make_lora_expert(tiny_vlm.path, root / "a", seed=1, r=8, lora_alpha=16),
        "b": make_lora_expert(tiny_vlm.path, root / "b", seed=2, r=4, lora_alpha=8, use_rslora=True),
        "c": make_lora_expert(tiny_vlm.path, root / "c", seed=3, r=8, lora_alpha=16, alpha_pattern={"q_proj": 4}),
    }


@pytest.fixture(scope="session")
def full_experts(tmp_path_factory: pytest.TempPathFactory, tiny_vlm) -> dict[str, Path]:
    """Two full fine-tuned checkpoints of the tiny model (the second sharded)."""
    from merge_proxy.testing.experts import make_full_expert

    root = tmp_path_factory.mktemp("full-experts")
    return {
        "f1": make_full_expert(tiny_vlm.path, root / "f1", seed=11),
        "f2": make_full_expert(tiny_vlm.path, root / "f2", seed=12, max_shard_size="200KB"),
    }
