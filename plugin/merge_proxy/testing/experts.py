"""Synthetic experts of any base model: random LoRA adapters and perturbed full checkpoints.

Exactness tests and benchmarks need experts whose deltas are large and distinct (a freshly initialised
PEFT adapter has B = 0, a delta of nothing). These are built with PEFT and transformers themselves,
so their files are exactly what those libraries write.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: The language model's linear layers of Qwen2-VL (what LLaMA-Factory's ``lora_target: all`` picks).
LM_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _lm_targets(model: torch.nn.Module, suffixes: Sequence[str]) -> list[str]:
    """Full module paths of the language model's linear layers (never the vision tower)."""
    return [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in suffixes
        and "visual" not in name and "vision" not in name
    ]


def load_base(base_dir: str | Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(base_dir, dtype=dtype).eval()


def make_lora_expert(
    base_dir: str | Path,
    out_dir: str | Path,
    seed: int,
    r: int = 8,
    lora_alpha: int = 16,
    targets: Sequence[str] = LM_LINEAR,
    std: float = 0.05,
    **lora_kwargs: Any,
) -> Path:
    """Save a PEFT LoRA adapter with random A and B (std ``std``) on the LM's linear layers."""
    from peft import LoraConfig, get_peft_model

    model = load_base(base_dir)
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha, target_modules=_lm_targets(model, targets), lora_dropout=0.0,
        init_lora_weights=False, **lora_kwargs,
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def make_full_expert(
    base_dir: str | Path,
    out_dir: str | Path,
    seed: int,
    std: float = 0.01,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = None,
    only: Sequence[str] = LM_LINEAR,
) -> Path:
    """Save a full checkpoint: the base with Gaussian noise added to the LM's linear weights.

    ``max_shard_size`` (e.g. ``"200KB"``) forces a sharded checkpoint with an index file.
    """
    from transformers import AutoProcessor

    model = load_base(base_dir, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    targets = {f"{t}.weight" for t in _lm_targets(model, only)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in targets:
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * std
                param.copy_((param.float() + noise).to(param.dtype))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    AutoProcessor.from_pretrained(base_dir).save_pretrained(out_dir)
    return Path(out_dir)
