"""LLaMA-Factory configurations sized for the tiny model and CPU.

A LoRA SFT run of the tiny Qwen2-VL on a synthetic domain takes seconds with these settings; the keys
are LLaMA-Factory's own, so the dict can be written as the YAML a user would pass to
``llamafactory-cli train`` or ``merge-proxy train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_sft_config(
    model_dir: str | Path,
    dataset_dir: str | Path,
    dataset: str | list[str],
    output_dir: str | Path,
    **overrides: Any,
) -> dict[str, Any]:
    """A LoRA SFT config for the tiny model: template qwen2_vl, all LM linear layers, CPU only.

    ``overrides`` replace or add LLaMA-Factory keys (e.g. ``max_steps=20``, ``seed=1``).
    """
    config: dict[str, Any] = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "dataset": dataset if isinstance(dataset, str) else ",".join(dataset),
        "dataset_dir": str(dataset_dir),
        "template": "qwen2_vl",
        "cutoff_len": 128,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-3,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "num_train_epochs": 1.0,
        "max_steps": 8,
        "seed": 0,
        "use_cpu": True,
        "report_to": "none",
        "plot_loss": False,
    }
    config.update(overrides)
    return config


def tiny_mixture_config(
    model_dir: str | Path,
    dataset_dir: str | Path,
    datasets: dict[str, float],
    output_dir: str | Path,
    **overrides: Any,
) -> dict[str, Any]:
    """A LoRA SFT config training on a data mixture, the way LLaMA-Factory users mix datasets.

    ``datasets`` maps LLaMA-Factory dataset names to mixture weights; zero-weight datasets are left
    out, and several datasets are interleaved with those probabilities (``interleave_under``), so the
    realised proportions are approximately the weights.
    """
    used = {name: w for name, w in datasets.items() if w > 0}
    config = tiny_sft_config(model_dir, dataset_dir, list(used), output_dir, **overrides)
    if len(used) > 1:
        total = sum(used.values())
        config["mix_strategy"] = "interleave_under"
        config["interleave_probs"] = ",".join(f"{w / total:.6g}" for w in used.values())
    return config
